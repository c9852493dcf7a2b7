package main

import (
	"fmt"
	"runtime"
)

func main() {
	fmt.Printf("api service (%s)\n", runtime.Version())
}
