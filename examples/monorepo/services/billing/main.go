package main

import (
	"fmt"
	"runtime"
)

func main() {
	fmt.Printf("billing service (%s)\n", runtime.Version())
}
