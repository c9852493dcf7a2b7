package main

import (
	"fmt"
	"runtime"
)

func main() {
	fmt.Printf("gateway service (%s)\n", runtime.Version())
}
