package main

import (
	"fmt"
	"runtime"
)

func main() {
	fmt.Printf("notify service (%s)\n", runtime.Version())
}
