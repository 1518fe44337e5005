// Command demo-http-server is the web server of `make demo`: it answers every
// request with a short greeting and logs each request line to stderr, so the
// demo can show which requests reached the server. It is Go rather than
// python3 -m http.server because every machine that builds grain has Go.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	addr := flag.String("addr", ":8080", "listen address (\":PORT\" listens on IPv4 and IPv6)")
	lifetime := flag.Duration("lifetime", 10*time.Minute, "exit after this long even if nobody stops the server")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("demo-http-server: ")

	srv := &http.Server{
		Addr: *addr,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			log.Printf("%s %s %s from %s", r.Method, r.URL.Path, r.Proto, r.RemoteAddr)
			fmt.Fprintf(w, "hello from the server namespace (you sent %s %s %s)\n", r.Method, r.URL.Path, r.Proto)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}

	// Bounded life: a demo interrupted so hard that its cleanup never ran
	// must not leave a server behind for ever.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *lifetime)
	defer cancel()
	go func() {
		<-ctx.Done()
		srv.Close()
	}()

	// Listen before saying so: the demo waits for this line.
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("listening on %s", ln.Addr())
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		log.Fatal(err)
	}
}
