package main

import (
	"fmt"
	"runtime"
)

func main() {
	fmt.Printf("worker service (%s)\n", runtime.Version())
}
