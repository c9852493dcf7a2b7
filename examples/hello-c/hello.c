#include <stdio.h>

int main(void) {
    puts("hello from a multi-stage C build");
    return 0;
}
