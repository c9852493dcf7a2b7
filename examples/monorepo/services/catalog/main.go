package main

import (
	"fmt"
	"runtime"
)

func main() {
	fmt.Printf("catalog service (%s)\n", runtime.Version())
}
