// A reference carve server for `npm run bench` only (the product is the TypeScript service): what osquery
// users commonly run today, written the usual way with the standard library. net/http, encoding/json
// decoding of the start and block bodies, base64 decoding of the block data, and each session's blocks
// appended to one file. No authentication, no journal, no fsync, no verification of the carve: it is the
// cost of a plain carve server, not an equivalent of ours.
//
//	go-carve-server -port PORT -host 127.0.0.1 -data DIR
//
// POST /start_uploads {block_count, block_size, carve_size, carve_id, request_id, node_key}
//
//	-> {"session_id": "<random hex>"}; creates DIR/<session>.part
//
// POST /upload_blocks {block_id, session_id, request_id, data (base64)}
//
//	-> {"success": true}; appends the decoded data; after block_count blocks the file becomes
//	DIR/<carve_id>.tar. Blocks are assumed to arrive once and in order (a sequential osquery agent).
//
// GET /status -> {"status": "ok"} (the bench waits for it).
package main

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
)

type startRequest struct {
	BlockCount int    `json:"block_count"`
	BlockSize  int    `json:"block_size"`
	CarveSize  int64  `json:"carve_size"`
	CarveID    string `json:"carve_id"`
	RequestID  string `json:"request_id"`
	NodeKey    string `json:"node_key"`
}

type blockRequest struct {
	BlockID   int    `json:"block_id"`
	SessionID string `json:"session_id"`
	RequestID string `json:"request_id"`
	Data      string `json:"data"`
}

type session struct {
	mu       sync.Mutex
	file     *os.File
	carveID  string
	expected int
	received int
}

type server struct {
	dir      string
	mu       sync.Mutex
	sessions map[string]*session
}

var safeID = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]any{"success": false, "error": msg})
}

func (s *server) start(w http.ResponseWriter, r *http.Request) {
	var req startRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		fail(w, http.StatusBadRequest, "bad json")
		return
	}
	if req.BlockCount < 1 || !safeID.MatchString(req.CarveID) {
		fail(w, http.StatusBadRequest, "bad start")
		return
	}
	raw := make([]byte, 16)
	if _, err := rand.Read(raw); err != nil {
		fail(w, http.StatusInternalServerError, "rand")
		return
	}
	id := hex.EncodeToString(raw)
	f, err := os.OpenFile(filepath.Join(s.dir, id+".part"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		fail(w, http.StatusInternalServerError, "open")
		return
	}
	s.mu.Lock()
	s.sessions[id] = &session{file: f, carveID: req.CarveID, expected: req.BlockCount}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]string{"session_id": id})
}

func (s *server) block(w http.ResponseWriter, r *http.Request) {
	var req blockRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		fail(w, http.StatusBadRequest, "bad json")
		return
	}
	s.mu.Lock()
	sess := s.sessions[req.SessionID]
	s.mu.Unlock()
	if sess == nil {
		fail(w, http.StatusNotFound, "no such session")
		return
	}
	data, err := base64.StdEncoding.DecodeString(req.Data)
	if err != nil {
		fail(w, http.StatusBadRequest, "bad base64")
		return
	}
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if sess.file == nil {
		fail(w, http.StatusConflict, "carve complete")
		return
	}
	if _, err := sess.file.Write(data); err != nil {
		fail(w, http.StatusInternalServerError, "write")
		return
	}
	sess.received++
	if sess.received >= sess.expected {
		name := sess.file.Name()
		_ = sess.file.Close()
		sess.file = nil
		if err := os.Rename(name, filepath.Join(s.dir, sess.carveID+".tar")); err != nil {
			fail(w, http.StatusInternalServerError, "rename")
			return
		}
		s.mu.Lock()
		delete(s.sessions, req.SessionID)
		s.mu.Unlock()
	}
	writeJSON(w, http.StatusOK, map[string]bool{"success": true})
}

func main() {
	port := flag.Int("port", 0, "TCP port (0: any free port)")
	host := flag.String("host", "127.0.0.1", "listen address")
	dir := flag.String("data", "", "directory for the carves (required)")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "go-carve-server: -data DIR is required")
		os.Exit(2)
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		log.Fatal(err)
	}
	s := &server{dir: *dir, sessions: map[string]*session{}}
	mux := http.NewServeMux()
	// Plain paths and a method check, not Go 1.22 method patterns: distributions still ship older Go.
	post := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodPost {
				fail(w, http.StatusMethodNotAllowed, "POST only")
				return
			}
			h(w, r)
		}
	}
	mux.HandleFunc("/start_uploads", post(s.start))
	mux.HandleFunc("/upload_blocks", post(s.block))
	mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	ln, err := net.Listen("tcp", net.JoinHostPort(*host, fmt.Sprint(*port)))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "go-carve-server: listening %s\n", ln.Addr())
	srv := &http.Server{Handler: mux}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
		log.Fatal(err)
	}
}
