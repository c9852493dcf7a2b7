// whoami answers every HTTP request with where it runs and what it was
// asked: host name, addresses, the request line, and its headers.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
)

func main() {
	port := flag.Int("port", 8080, "TCP port to listen on")
	name := flag.String("name", os.Getenv("WHOAMI_NAME"), "a name to report with each answer")
	flag.Parse()

	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, report(*name, r))
	})
	http.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})

	addr := fmt.Sprintf(":%d", *port)
	log.Printf("whoami listening on %s", addr)
	log.Fatal(http.ListenAndServe(addr, nil))
}

// report describes this host and the request r.
func report(name string, r *http.Request) string {
	var b strings.Builder
	if name != "" {
		fmt.Fprintf(&b, "Name: %s\n", name)
	}
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "Hostname: %s\n", host)
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			fmt.Fprintf(&b, "IP: %s\n", strings.SplitN(a.String(), "/", 2)[0])
		}
	}
	fmt.Fprintf(&b, "RemoteAddr: %s\n", r.RemoteAddr)
	fmt.Fprintf(&b, "%s %s %s\n", r.Method, r.URL.RequestURI(), r.Proto)
	fmt.Fprintf(&b, "Host: %s\n", r.Host)
	keys := make([]string, 0, len(r.Header))
	for k := range r.Header {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range r.Header[k] {
			fmt.Fprintf(&b, "%s: %s\n", k, v)
		}
	}
	return b.String()
}
