package main

import (
	"fmt"
	"runtime"
)

func main() {
	fmt.Printf("search service (%s)\n", runtime.Version())
}
