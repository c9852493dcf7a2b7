package main

import (
	"fmt"
	"runtime"
)

func main() {
	fmt.Printf("cart service (%s)\n", runtime.Version())
}
