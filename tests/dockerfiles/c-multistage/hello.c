#include <stdio.h>

int main(void) {
    puts("hello from a Dockerfile");
    return 0;
}
