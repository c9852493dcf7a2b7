package main

import "testing"

func TestGreeting(t *testing.T) {
	got := Greeting("ci", "1.2.3")
	want := "hello, ci, from app 1.2.3"
	if got != want {
		t.Fatalf("Greeting() = %q, want %q", got, want)
	}
}
