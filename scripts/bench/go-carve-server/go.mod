module osquery-carve-server/bench/go-carve-server

go 1.18
