package engine

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/goutong/goutong/dedupe"
	"github.com/goutong/goutong/notification"
)

// metrics are the engine's Prometheus series. They live on the Engine, not
// in package globals, and are registered on the Registry the caller gives.
type metrics struct {
	polled     prometheus.Counter
	latency    *prometheus.HistogramVec // enqueue to provider ack, per channel and priority
	stage      *prometheus.HistogramVec // the same split in three, for sends the provider accepted
	sends      *prometheus.CounterVec   // per channel, provider, outcome
	retries    *prometheus.CounterVec
	deadLetter *prometheus.CounterVec // per reason
	duplicates *prometheus.CounterVec
	takenOver  *prometheus.CounterVec // sent by another node, found at a takeover
	expired    *prometheus.CounterVec
	limitWait  *prometheus.CounterVec // seconds dispatchers waited for tokens
	lag        *prometheus.GaugeVec
	paused     prometheus.Gauge
	delayed    prometheus.Gauge
	parked     *prometheus.CounterVec // per tier
	commits    prometheus.Counter
	// writeRetries counts outcome writes the log refused (tried again).
	writeRetries prometheus.Counter
	// replicaErrors counts the status replica's failed polls (tried again).
	replicaErrors prometheus.Counter
	// replicaRewinds counts the replica's reads from its last checkpoint
	// after a failed write of this process's own events.
	replicaRewinds prometheus.Counter
	// replicaShared is 1 while another process runs with this node id.
	replicaShared prometheus.Gauge
	// replicaLag is the status topic's records the replica has yet to apply.
	replicaLag prometheus.Gauge
	// The status store's checkpoints (checkpoint.go): taken or failed, and
	// the events the last start replayed.
	checkpoints *prometheus.CounterVec
	replayed    prometheus.Counter
	replayable  prometheus.Gauge
	// ingestWaits counts Ingest calls that waited for another call holding
	// one of their keys (awaitInFlight), by how it ended.
	ingestWaits *prometheus.CounterVec
	// ingestPartlyWritten counts notifications the log wrote for requests
	// it wrote only in part (answered 503): they will be sent.
	ingestPartlyWritten prometheus.Counter
	// ingestMended counts the events mending writes in part, by state
	// and result.
	ingestMended *prometheus.CounterVec
}

func newMetrics() *metrics {
	return &metrics{
		polled: prometheus.NewCounter(prometheus.CounterOpts{Name: "goutong_records_polled_total",
			Help: "Records read from the log."}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "goutong_delivery_latency_seconds",
			Help:    "From acceptance to the provider's answer, for sends the provider accepted.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 1800}},
			[]string{"channel", "priority"}),
		stage: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "goutong_stage_latency_seconds",
			Help: "Where a sent notification's latency went: log (acceptance to the consumer's poll: the durable " +
				"append and the log's backlog), engine (poll to the provider call: dedupe, rings, priority, rate " +
				"limits, batching, a free sender), provider (the call). First attempts only.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10, 60}},
			[]string{"channel", "priority", "stage"}),
		sends: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "goutong_sends_total",
			Help: "Items handed to providers, by outcome (sent, retriable, permanent)."}, []string{"channel", "provider", "outcome"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "goutong_retries_total",
			Help: "Notifications moved to the retry topic."}, []string{"channel"}),
		deadLetter: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "goutong_dead_letters_total",
			Help: "Records moved to the dead-letter topic, by reason."}, []string{"reason"}),
		duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "goutong_duplicates_total",
			Help: "Records not sent because their idempotency key was already sent or in flight."}, []string{"channel"}),
		takenOver: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "goutong_takeover_skipped_total",
			Help: "Records of a partition taken over from another node that the status topic showed sent (or duplicates) there: finished without a send."}, []string{"channel"}),
		expired: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "goutong_expired_total",
			Help: "Notifications dropped because they expired before they could be sent."}, []string{"channel"}),
		limitWait: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "goutong_limiter_wait_seconds_total",
			Help: "Time dispatchers and senders waited for rate-limit tokens."}, []string{"channel"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "goutong_consumer_lag",
			Help: "Records between the committed offset and the end of each assigned partition."}, []string{"topic", "partition"}),
		paused: prometheus.NewGauge(prometheus.GaugeOpts{Name: "goutong_partitions_paused",
			Help: "Partitions paused by backpressure."}),
		delayed: prometheus.NewGauge(prometheus.GaugeOpts{Name: "goutong_delayed_records",
			Help: "Records held until their not_before or retry time."}),
		parked: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "goutong_parked_total",
			Help: "Records parked in a parking topic until nearer their time, by the topic's hop."}, []string{"hop"}),
		commits: prometheus.NewCounter(prometheus.CounterOpts{Name: "goutong_offset_commits_total",
			Help: "Offset commits."}),
		writeRetries: prometheus.NewCounter(prometheus.CounterOpts{Name: "goutong_outcome_write_retries_total",
			Help: "Writes of outcomes (status events, retry records, dead letters) the log refused, each tried again until it succeeds."}),
		replicaErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "goutong_status_replica_errors_total",
			Help: "Polls of the status topic by the status replica (nodes with a node id) that failed, each tried again a second later."}),
		replicaRewinds: prometheus.NewCounter(prometheus.CounterOpts{Name: "goutong_status_replica_rewinds_total",
			Help: "Times the status replica read the status topic again from its last checkpoint because a write of this node's own events to the status store failed."}),
		replicaLag: prometheus.NewGauge(prometheus.GaugeOpts{Name: "goutong_status_replica_lag",
			Help: "Records of the status topic a Kafka node's status replica has yet to apply, measured every status checkpoint interval. Growing: the fleet produces events faster than a node reads them."}),
		replicaShared: prometheus.NewGauge(prometheus.GaugeOpts{Name: "goutong_status_replica_node_id_shared",
			Help: "1 while the status replica has been assigned only part of the status topic for 30 s: another process runs with this node's node_id."}),
		checkpoints: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "goutong_status_checkpoints_total",
			Help: "Status store checkpoints (a flush, then the status topic's applied offsets committed), by result (ok, failed). " +
				"After a crash the store replays the topic from the last ok one."}, []string{"result"}),
		replayed: prometheus.NewCounter(prometheus.CounterOpts{Name: "goutong_status_replayed_events_total",
			Help: "Status topic records replayed into the status store at start: what a crash took from it since the last checkpoint."}),
		replayable: prometheus.NewGauge(prometheus.GaugeOpts{Name: "goutong_status_replay_backlog",
			Help: "Status topic records past the last checkpoint, measured at each: what a crash now would have the next start replay."}),
		ingestWaits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "goutong_ingest_key_waits_total",
			Help: "Ingest requests that waited for another request still accepting one of their idempotency keys, by result: " +
				"resolved (that request finished, and this one was answered by its outcome) or in_progress (it did not within 2 s: 409)."},
			[]string{"result"}),
		ingestPartlyWritten: prometheus.NewCounter(prometheus.CounterOpts{Name: "goutong_ingest_partly_written_total",
			Help: "Notifications written to the log for requests it wrote only in part (some partitions failed), answered 503: " +
				"they will be sent, and a resend of the request answers them as duplicates."}),
		ingestMended: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "goutong_ingest_mended_events_total",
			Help: "Status events mending an ingest the log wrote in part, by state and result: withdrawn follows an accepted event " +
				"the embedded log wrote for a notification it did not (failed: status webhooks forwarded an accepted event of a " +
				"notification that will not be sent), accepted is written late for a notification written without it. failed: not " +
				"produced after 5 tries."},
			[]string{"state", "result"}),
	}
}

// Stages of goutong_stage_latency_seconds.
const (
	stageLog = iota
	stageEngine
	stageProvider
	numStages
)

// latencyObservers are a channel's latency histograms by priority, looked
// up once: a label lookup per send was a hash of three strings.
type latencyObservers struct {
	total [notification.NumPriorities]prometheus.Observer
	stage [notification.NumPriorities][numStages]prometheus.Observer
}

func (m *metrics) observers(channel notification.Channel) *latencyObservers {
	var o latencyObservers
	for p := range notification.NumPriorities {
		prio := notification.Priority(p + 1).String()
		o.total[p] = m.latency.WithLabelValues(string(channel), prio)
		for s, name := range [numStages]string{"log", "engine", "provider"} {
			o.stage[p][s] = m.stage.WithLabelValues(string(channel), prio, name)
		}
	}
	return &o
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.polled, m.latency, m.stage, m.sends, m.retries, m.deadLetter, m.duplicates, m.takenOver, m.expired,
		m.limitWait, m.lag, m.paused, m.delayed, m.parked, m.commits, m.writeRetries, m.replicaErrors, m.replicaRewinds, m.replicaShared, m.replicaLag, m.checkpoints, m.replayed, m.replayable, m.ingestWaits, m.ingestPartlyWritten, m.ingestMended}
}

// storeCollector exports a store's metrics, read once a scrape (the stores
// keep their counters; a scrape asks Pebble for its sizes, which is cheap
// at scrape intervals).
type storeCollector[M any] struct {
	metrics func() M
	series  []storeSeries[M]
}

type storeSeries[M any] struct {
	desc  *prometheus.Desc
	vtype prometheus.ValueType
	value func(M) float64
}

func (c storeCollector[M]) Describe(ch chan<- *prometheus.Desc) {
	for _, s := range c.series {
		ch <- s.desc
	}
}

func (c storeCollector[M]) Collect(ch chan<- prometheus.Metric) {
	m := c.metrics()
	for _, s := range c.series {
		ch <- prometheus.MustNewConstMetric(s.desc, s.vtype, s.value(m))
	}
}

func statusGauge(name, help string, v func(StatusMetrics) float64) storeSeries[StatusMetrics] {
	return storeSeries[StatusMetrics]{prometheus.NewDesc("goutong_status_store_"+name, help, nil, nil), prometheus.GaugeValue, v}
}

var statusMetrics = []storeSeries[StatusMetrics]{
	statusGauge("disk_bytes", "Bytes the status store takes on disk.", func(m StatusMetrics) float64 { return float64(m.DiskBytes) }),
	statusGauge("l0_files", "Status store tables in level 0, waiting for compaction.", func(m StatusMetrics) float64 { return float64(m.L0Files) }),
	statusGauge("compaction_debt_bytes", "Bytes the status store estimates it must compact to settle.",
		func(m StatusMetrics) float64 { return float64(m.CompactionDebt) }),
	statusCounter("block_cache_hits", "Status store reads (GET, duplicates' answers, receipts) whose blocks were cached.",
		func(m StatusMetrics) int64 { return m.CacheHits }),
	statusCounter("block_cache_misses", "Status store reads whose blocks were read from disk and decompressed.",
		func(m StatusMetrics) int64 { return m.CacheMisses }),
}

func statusCounter(name, help string, v func(StatusMetrics) int64) storeSeries[StatusMetrics] {
	return storeSeries[StatusMetrics]{prometheus.NewDesc("goutong_status_store_"+name+"_total", help, nil, nil), prometheus.CounterValue,
		func(m StatusMetrics) float64 { return float64(v(m)) }}
}

var dedupeMetrics = []storeSeries[dedupe.Metrics]{
	dedupeCounter("claims", "Keys claimed new (sent).", func(m dedupe.Metrics) int64 { return m.Claims }),
	dedupeCounter("duplicates", "Claims of keys already confirmed (not sent).", func(m dedupe.Metrics) int64 { return m.Hits }),
	dedupeCounter("in_flight", "Claims of keys another claimant holds a live lease on.", func(m dedupe.Metrics) int64 { return m.InFlight }),
	dedupeCounter("taken_over", "Expired claims taken over and sent again (policy resend).", func(m dedupe.Metrics) int64 { return m.TakenOver }),
	dedupeCounter("uncertain", "Expired claims closed without sending (policy skip).", func(m dedupe.Metrics) int64 { return m.Uncertain }),
	dedupeCounter("confirms", "Keys confirmed after a send.", func(m dedupe.Metrics) int64 { return m.Confirms }),
	dedupeCounter("releases", "Keys released after a permanent failure.", func(m dedupe.Metrics) int64 { return m.Releases }),
	dedupeCounter("lookups", "Keys looked up without claiming.", func(m dedupe.Metrics) int64 { return m.Lookups }),
	dedupeCounter("remembered", "Keys another node sent or accepted, copied here from its status events so they answer as duplicates here too.",
		func(m dedupe.Metrics) int64 { return m.Remembered }),
	dedupeCounter("forgotten", "Remembered keys dropped again: the withdrawn events of nodes that wrote them on Kafka (before 2026-11-27) after accepted events whose records were not written.",
		func(m dedupe.Metrics) int64 { return m.Forgotten }),
	dedupeCounter("write_errors", "Writes (claims, confirms, releases, copied keys) the store failed to make durable: each loses keys a later repeat would have been stopped by.",
		func(m dedupe.Metrics) int64 { return m.WriteErrors }),
	dedupeGauge("refusing_writes", "1 once the store refuses every write (a failed write or fsync of its log): the node is unready until restarted.",
		func(m dedupe.Metrics) float64 { return boolGauge(m.Refusing) }),
	dedupeCounter("reclaims", "Range deletes of expired time buckets.", func(m dedupe.Metrics) int64 { return m.Reclaims }),
	dedupeGauge("keys", "Entries on disk, approximately (the memtable is not counted).", func(m dedupe.Metrics) float64 { return float64(m.KeysApprox) }),
	dedupeGauge("disk_bytes", "Bytes the store takes on disk.", func(m dedupe.Metrics) float64 { return float64(m.DiskBytes) }),
	dedupeCounter("block_cache_hits", "Pebble reads (claims and lookups the filters let through) whose blocks were cached.",
		func(m dedupe.Metrics) int64 { return m.CacheHits }),
	dedupeCounter("block_cache_misses", "Pebble reads whose blocks were read from disk and decompressed.",
		func(m dedupe.Metrics) int64 { return m.CacheMisses }),
	dedupeGauge("recent_keys", "Keys whose newest entry is copied in memory (WithRecent).", func(m dedupe.Metrics) float64 { return float64(m.RecentKeys) }),
	dedupeGauge("recent_bytes", "Memory the copies of recent entries take.", func(m dedupe.Metrics) float64 { return float64(m.RecentBytes) }),
	dedupeGauge("filter_bytes", "Memory the time buckets' Bloom filters take (bounded by WithFilterMemory).", func(m dedupe.Metrics) float64 { return float64(m.FilterBytes) }),
	dedupeGauge("filter_stages", "The most stages a time bucket's filter has grown to: 1 at 3.3 % false positives (a disk probe each), 3 at 5.0 %, 6 at 5.6 %.",
		func(m dedupe.Metrics) float64 { return float64(m.FilterStages) }),
	dedupeCounter("filter_stages_refused", "Filter stages not added for want of memory (dedupe.filter_max_bytes): a full bucket's filter then answers \"maybe\" to more new keys, each a disk probe.",
		func(m dedupe.Metrics) int64 { return m.FilterRefused }),
	dedupeGauge("buffer_records", "Writes in the write buffer, not yet ingested into Pebble.", func(m dedupe.Metrics) float64 { return float64(m.BufferKeys) }),
	dedupeGauge("buffer_bytes", "Bytes of writes in the write buffer.", func(m dedupe.Metrics) float64 { return float64(m.BufferBytes) }),
	dedupeCounter("buffer_ingests", "Write-buffer generations ingested into Pebble as sorted sstables.", func(m dedupe.Metrics) int64 { return m.BufferIngests }),
	dedupeCounter("buffer_syncs", "fsyncs of the write buffer's log for synced writes (against confirms: how well they are shared).", func(m dedupe.Metrics) int64 { return m.Syncs }),
}

func dedupeCounter(name, help string, v func(dedupe.Metrics) int64) storeSeries[dedupe.Metrics] {
	return storeSeries[dedupe.Metrics]{prometheus.NewDesc("goutong_dedupe_"+name+"_total", help, nil, nil), prometheus.CounterValue,
		func(m dedupe.Metrics) float64 { return float64(v(m)) }}
}

func dedupeGauge(name, help string, v func(dedupe.Metrics) float64) storeSeries[dedupe.Metrics] {
	return storeSeries[dedupe.Metrics]{prometheus.NewDesc("goutong_dedupe_"+name, help, nil, nil), prometheus.GaugeValue, v}
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
