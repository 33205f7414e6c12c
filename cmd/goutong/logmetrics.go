package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/goutong/goutong/wal"
)

// logCollector exports the embedded log's Stats, read at each scrape.
type logCollector struct{ w *wal.Log }

var (
	logCounters = []struct {
		desc *prometheus.Desc
		v    func(wal.Stats) int64
	}{
		{prometheus.NewDesc("goutong_log_records_total", "Records appended to the embedded log.", nil, nil),
			func(s wal.Stats) int64 { return s.Records }},
		{prometheus.NewDesc("goutong_log_batches_total", "Frames written to the embedded log: one per group commit of a partition (records / batches is the grouping).", nil, nil),
			func(s wal.Stats) int64 { return s.Batches }},
		{prometheus.NewDesc("goutong_log_written_bytes_total", "Bytes of frames written to the embedded log, after compression.", nil, nil),
			func(s wal.Stats) int64 { return s.BytesWritten }},
		{prometheus.NewDesc("goutong_log_fsyncs_total", "fsyncs of the embedded log's segment files.", nil, nil),
			func(s wal.Stats) int64 { return s.Fsyncs }},
		{prometheus.NewDesc("goutong_log_append_errors_total", "Appends to the embedded log answered with an error (the request got a 503, or the engine tried its outcome again).", nil, nil),
			func(s wal.Stats) int64 { return s.AppendErrors }},
	}
	logTopicGauges = []struct {
		desc *prometheus.Desc
		v    func(wal.TopicStats) float64
	}{
		{prometheus.NewDesc("goutong_log_topic_records", "Records the embedded log keeps of a topic (retention removes whole segments).", []string{"topic"}, nil),
			func(t wal.TopicStats) float64 { return float64(t.Records) }},
		{prometheus.NewDesc("goutong_log_topic_bytes", "Bytes of a topic's segment files.", []string{"topic"}, nil),
			func(t wal.TopicStats) float64 { return float64(t.Bytes) }},
		{prometheus.NewDesc("goutong_log_topic_segments", "A topic's segment files.", []string{"topic"}, nil),
			func(t wal.TopicStats) float64 { return float64(t.Segments) }},
		{prometheus.NewDesc("goutong_log_refusing_partitions", "A topic's partitions that refuse appends until the node restarts (a failed write or fsync left their tail unknown).", []string{"topic"}, nil),
			func(t wal.TopicStats) float64 { return float64(t.Refusing) }},
	}
)

func (c logCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range logCounters {
		ch <- m.desc
	}
	for _, m := range logTopicGauges {
		ch <- m.desc
	}
}

func (c logCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.w.Stats()
	for _, m := range logCounters {
		ch <- prometheus.MustNewConstMetric(m.desc, prometheus.CounterValue, float64(m.v(st)))
	}
	for _, t := range st.Topics {
		for _, m := range logTopicGauges {
			ch <- prometheus.MustNewConstMetric(m.desc, prometheus.GaugeValue, m.v(t), t.Name)
		}
	}
}
