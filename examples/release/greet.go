package main

import "fmt"

// Greeting is the line the app prints.
func Greeting(name, version string) string {
	return fmt.Sprintf("hello, %s, from app %s", name, version)
}
