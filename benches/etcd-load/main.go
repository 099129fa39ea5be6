// etcd-load: the etcd side of benches/etcd-compare.sh, written with etcd's
// own Go client (clientv3) so that etcd is driven as its users drive it.
//
// What it measures: N concurrent clients, each with its own connection to
// the leader of the etcd cluster (as `kairos-bench create` gives each of its
// clients; -conns shares fewer), each doing sequential Puts of V-byte
// values to distinct keys ("bench-<client>-<n>") for a fixed duration. It
// reports acknowledged puts per second and the put latency (send to
// acknowledgement) at p50, p99 and p999, as one JSON object and one table
// row on stdout, with the keys, units and percentile rule of
// `kairos-bench create` (a percentile is the sorted sample at index
// round((n-1) q)), so the script can put both in one table. Failed puts
// are counted as errors and left out of the latencies.
//
// The leader is found with the maintenance Status API (the endpoint whose
// member id is the leader it reports), or given with -leader.
//
// Bounds: at most 1024 clients and 10 minutes; every put has a 10-s
// deadline, so the run ends at most that long after the duration.
//
// Build (offline, from Debian's golang-etcd-server-dev; etcd-compare.sh does it):
//
//	GO111MODULE=off GOPATH=<dir>:/usr/share/gocode go build -o etcd-load benches/etcd-load/main.go
//
// Run:
//
//	etcd-load -endpoints 127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379 -clients 64 -payload 256 -duration 10s
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/clientv3"
)

// Upper bounds of a run, so that a mistyped flag cannot load the machine for long.
const (
	maxClients  = 1024
	maxDuration = 10 * time.Minute
	// putTimeout bounds one put, so a stuck request cannot outlive the run by more.
	putTimeout = 10 * time.Second
	// dialTimeout bounds connecting to a member.
	dialTimeout = 5 * time.Second
)

func main() {
	endpoints := flag.String("endpoints", "", "client endpoints of the cluster (host:port,...); the leader is looked up among them")
	leader := flag.String("leader", "", "the leader's client endpoint (host:port); skips the lookup")
	clients := flag.Int("clients", 1, "concurrent clients")
	connections := flag.Int("conns", 0, "connections the clients share round-robin (default: one per client)")
	payload := flag.Int("payload", 256, "bytes per value")
	duration := flag.Duration("duration", 10*time.Second, "how long the clients put")
	flag.Parse()

	if *connections == 0 {
		*connections = *clients
	}
	if *clients < 1 || *clients > maxClients || *connections < 1 || *connections > *clients ||
		*duration <= 0 || *duration > maxDuration || *payload < 0 {
		fail(fmt.Errorf("need 1 <= -clients <= %d, 1 <= -conns <= -clients, 0 < -duration <= %s, -payload >= 0",
			maxClients, maxDuration))
	}
	target := *leader
	if target == "" {
		if *endpoints == "" {
			fail(fmt.Errorf("give -endpoints or -leader"))
		}
		found, err := findLeader(strings.Split(*endpoints, ","))
		if err != nil {
			fail(err)
		}
		target = found
	}

	conns := make([]*clientv3.Client, *connections)
	for i := range conns {
		conn, err := clientv3.New(clientv3.Config{Endpoints: []string{target}, DialTimeout: dialTimeout})
		if err != nil {
			fail(fmt.Errorf("connect to %s: %w", target, err))
		}
		defer conn.Close()
		conns[i] = conn
	}

	latencies, errors, seconds := run(*clients, conns, *payload, *duration)
	report(target, *clients, *connections, *payload, latencies, errors, seconds)
}

// findLeader asks each endpoint for its status and returns the one that is the leader.
func findLeader(endpoints []string) (string, error) {
	conn, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: dialTimeout})
	if err != nil {
		return "", fmt.Errorf("connect to %v: %w", endpoints, err)
	}
	defer conn.Close()
	for _, endpoint := range endpoints {
		ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
		status, err := conn.Status(ctx, endpoint)
		cancel()
		if err == nil && status.Header.MemberId == status.Leader {
			return endpoint, nil
		}
	}
	return "", fmt.Errorf("no leader among %v", endpoints)
}

// run drives one goroutine per client, client i on connection i mod
// len(conns), until the duration has passed and returns the latencies of
// acknowledged puts (ms), the failed puts, and the seconds from the start
// until the last goroutine finished.
func run(clients int, conns []*clientv3.Client, payload int, duration time.Duration) ([]float64, uint64, float64) {
	value := strings.Repeat("x", payload)
	var (
		mu        sync.Mutex
		latencies []float64
		errors    uint64
		acked     int64
		wg        sync.WaitGroup
	)
	started := time.Now()
	until := started.Add(duration)
	for client := 0; client < clients; client++ {
		conn := conns[client%len(conns)]
		wg.Add(1)
		go func(client int, conn *clientv3.Client) {
			defer wg.Done()
			mine := make([]float64, 0, 1024)
			for n := 1; time.Now().Before(until); n++ {
				ctx, cancel := context.WithTimeout(context.Background(), putTimeout)
				sent := time.Now()
				_, err := conn.Put(ctx, fmt.Sprintf("bench-%d-%d", client, n), value)
				elapsed := time.Since(sent)
				cancel()
				if err != nil {
					atomic.AddUint64(&errors, 1)
					continue
				}
				mine = append(mine, float64(elapsed.Nanoseconds())/1e6)
				atomic.AddInt64(&acked, 1)
			}
			mu.Lock()
			latencies = append(latencies, mine...)
			mu.Unlock()
		}(client, conn)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	ticker := time.NewTicker(500 * time.Millisecond)
	defer ticker.Stop()
	for {
		select {
		case <-done:
			fmt.Fprintln(os.Stderr)
			return latencies, atomic.LoadUint64(&errors), time.Since(started).Seconds()
		case <-ticker.C:
			elapsed := time.Since(started).Seconds()
			n := atomic.LoadInt64(&acked)
			fmt.Fprintf(os.Stderr, "\r%-100s", fmt.Sprintf("create (etcd): %5.1f s, %d acknowledged, %.0f/s", elapsed, n, float64(n)/elapsed))
		}
	}
}

// quantile is the value at quantile q of sorted values (kairos-bench's rule).
func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(math.Round(float64(len(sorted)-1)*q))]
}

// report prints the JSON object and the table of `kairos-bench create`.
func report(leader string, clients, connections, payload int, latencies []float64, errors uint64, seconds float64) {
	sort.Float64s(latencies)
	perSecond := float64(len(latencies)) / seconds
	p50, p99, p999 := quantile(latencies, 0.5), quantile(latencies, 0.99), quantile(latencies, 0.999)
	result, err := json.Marshal(map[string]interface{}{
		"scenario":         "create",
		"target":           "etcd",
		"client":           "clientv3 (Go), leader only",
		"leader":           leader,
		"clients":          clients,
		"connections":      connections,
		"payload_bytes":    payload,
		"creates":          len(latencies),
		"errors":           errors,
		"seconds":          seconds,
		"throughput_per_s": perSecond,
		"p50_ms":           p50,
		"p99_ms":           p99,
		"p999_ms":          p999,
	})
	if err != nil {
		fail(err)
	}
	fmt.Println(string(result))
	fmt.Println("| target | clients | payload | writes | per s | p50 ms | p99 ms | p999 ms |")
	fmt.Printf("| etcd | %d | %d B | %d | %.0f | %.2f | %.2f | %.2f |\n", clients, payload, len(latencies), perSecond, p50, p99, p999)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "etcd-load:", err)
	os.Exit(1)
}
