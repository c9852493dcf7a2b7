package main

import (
	"fmt"
	"runtime"
)

func main() {
	fmt.Printf("auth service (%s)\n", runtime.Version())
}
