// app prints a greeting and the version it was released as.
package main

import (
	"flag"
	"fmt"
)

// version is set at build time: -ldflags "-X main.version=1.2.3".
var version = "dev"

func main() {
	name := flag.String("name", "world", "who to greet")
	flag.Parse()
	fmt.Println(Greeting(*name, version))
}
