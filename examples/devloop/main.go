// A small web server for the development loop: it renders the templates in
// -templates (read once, at start) and listens on -port.
package main

import (
	"flag"
	"fmt"
	"html/template"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// greeting is what the page says; edit it and bake watch recompiles.
const greeting = "Hello from the development loop"

func main() {
	port := flag.Int("port", 8080, "port to listen on")
	dir := flag.String("templates", "templates", "folder of *.html templates")
	flag.Parse()

	pages, err := template.ParseGlob(filepath.Join(*dir, "*.html"))
	if err != nil {
		log.Fatalf("templates: %v", err)
	}
	started := time.Now()
	host, _ := os.Hostname()
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		data := map[string]any{
			"Greeting": greeting,
			"Host":     host,
			"Path":     r.URL.Path,
			"Uptime":   time.Since(started).Round(time.Millisecond).String(),
		}
		if err := pages.ExecuteTemplate(w, "index.html", data); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	addr := fmt.Sprintf(":%d", *port)
	log.Printf("listening on %s", addr)
	log.Fatal(http.ListenAndServe(addr, nil))
}
