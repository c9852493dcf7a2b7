package main

import (
	"fmt"
	"runtime"
)

func main() {
	fmt.Printf("web service (%s)\n", runtime.Version())
}
