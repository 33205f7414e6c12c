package main

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// BenchmarkKafkaFailover measures what a node's death costs in resends:
// two serve processes on one Kafka cluster (kfake, in this process) and a
// stream of notifications to the second; the first is killed with -9 two
// seconds in and the second takes its partitions over. It reports the
// notifications the provider received twice (sent by the dead node, sent
// again by the survivor) and those the survivor found sent in the status
// topic and did not send again (takeover.go in the engine). A measurement,
// not a speed: run it with -benchtime 1x.
func BenchmarkKafkaFailover(b *testing.B) {
	for range b.N {
		twice, skipped := kafkaFailover(b)
		b.ReportMetric(float64(twice), "sent-twice")
		b.ReportMetric(skipped, "takeover-skipped")
	}
}

func kafkaFailover(t testing.TB) (twice int64, skipped float64) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mock := slowMock(t)
	conf := writeConfig(t, mock.URL())
	kafka := strings.Join(c.ListenAddrs(), ",")
	a := startServe(t, "--config", conf, "--data", t.TempDir(), "--kafka", kafka)
	b := startServe(t, "--config", conf, "--data", t.TempDir(), "--kafka", kafka)
	time.Sleep(3 * time.Second) // both in the group, each with half the partitions
	stopPosting := postStream(b.url)
	time.Sleep(2 * time.Second)
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-a.done
	time.Sleep(2 * time.Second)
	accepted := stopPosting()
	pending := map[string]bool{}
	for _, id := range accepted {
		pending[id] = true
	}
	waitUntil(t, 2*time.Minute, "every accepted notification sent", func() bool {
		for id := range pending {
			if statusOf(b.url, id) == "sent" {
				delete(pending, id)
			}
		}
		return len(pending) == 0
	})
	time.Sleep(2 * time.Second) // anything resent late has arrived
	st := mock.Stats()
	if st.Unique != int64(len(accepted)) {
		t.Fatalf("provider saw %d distinct notifications, %d were accepted", st.Unique, len(accepted))
	}
	t.Logf("accepted %d; provider received %d, %d distinct", len(accepted), st.Received, st.Unique)
	return st.Received - st.Unique, metricValue(t, b.url, "goutong_takeover_skipped_total")
}
