// bookstore serves a list of books as an HTML page rendered from the
// templates in ./templates (relative to the working directory).
package main

import (
	"flag"
	"fmt"
	"html/template"
	"log"
	"net/http"
)

// Book is one entry of the catalogue.
type Book struct {
	Title  string
	Author string
	Year   int
}

var books = []Book{
	{"The Go Programming Language", "Alan Donovan and Brian Kernighan", 2015},
	{"The C Programming Language", "Brian Kernighan and Dennis Ritchie", 1978},
	{"Structure and Interpretation of Computer Programs", "Harold Abelson and Gerald Jay Sussman", 1985},
}

func main() {
	port := flag.Int("port", 8080, "TCP port to listen on")
	dir := flag.String("templates", "templates", "folder of *.tmpl files")
	flag.Parse()

	pages, err := template.ParseGlob(*dir + "/*.tmpl")
	if err != nil {
		log.Fatalf("templates: %v", err)
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		if err := pages.ExecuteTemplate(w, "index.tmpl", books); err != nil {
			log.Printf("render: %v", err)
		}
	})
	addr := fmt.Sprintf(":%d", *port)
	log.Printf("bookstore listening on %s", addr)
	log.Fatal(http.ListenAndServe(addr, nil))
}
