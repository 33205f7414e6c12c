package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/goutong/goutong/engine"
	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/partition"
	"github.com/goutong/goutong/wal"
)

// selfcheckTopic is where selfcheck writes its samples: never a topic the
// engine consumes, so a later `goutong serve` on the same data directory does
// not send them.
const selfcheckTopic = "goutong.selfcheck"

// standardTopics are a deployment's topics (engine.Topics.Specs, the seed's
// retention plan) plus selfcheck's own.
func standardTopics(partitions int32) []partition.TopicSpec {
	return append(engine.DefaultTopics().Specs(partitions),
		partition.TopicSpec{Name: selfcheckTopic, Partitions: partitions, RetentionAge: time.Hour, DeleteUncommitted: true, Compression: "s2"})
}

type selfcheckFlags struct {
	data       string
	kafka      []string
	partitions int32
	count      int
	batch      int
}

func newSelfcheck() *cobra.Command {
	var f selfcheckFlags
	cmd := &cobra.Command{
		Use:   "selfcheck",
		Short: "Check the log end to end: create the topics, produce sample notifications of every channel, consume, decode and commit them",
		Long: `selfcheck exercises the foundation the engine runs on, on this machine:
it opens the embedded log in --data (or Kafka with --kafka), creates the
standard topics, produces --count sample notifications of every channel and
priority through the consumer-facing Log, reads them back as a consumer
group, decodes and validates each one, commits, and prints what it measured.
It also shows how the decoder rejects malformed input.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runSelfcheck(cmd.Context(), cmd.OutOrStdout(), f)
		},
	}
	cmd.Flags().StringVar(&f.data, "data", "./data", "directory of the embedded log")
	cmd.Flags().StringSliceVar(&f.kafka, "kafka", nil, "Kafka seed brokers host:port,...; empty uses the embedded log")
	cmd.Flags().Int32Var(&f.partitions, "partitions", 8, "partitions of the notification topics when created")
	cmd.Flags().IntVar(&f.count, "count", 100_000, "sample notifications to produce")
	cmd.Flags().IntVar(&f.batch, "batch", 1000, "records per Produce call")
	return cmd
}

func openLog(data string, kafka []string, cc partition.ConsumerConfig) (partition.Log, error) {
	if len(kafka) > 0 {
		return partition.NewKafka(partition.KafkaConfig{Brokers: kafka}, cc)
	}
	w, err := wal.Open(filepath.Join(data, "log"))
	if err != nil {
		return nil, err
	}
	return partition.NewWAL(w, cc).OwnWAL(), nil
}

func runSelfcheck(ctx context.Context, out io.Writer, f selfcheckFlags) error {
	if f.count < 1 || f.batch < 1 {
		return errors.New("--count and --batch must be positive")
	}
	runID := notification.NewID()
	group := "goutong-selfcheck"
	l, err := openLog(f.data, f.kafka, partition.ConsumerConfig{Group: group, Topics: []string{selfcheckTopic}})
	if err != nil {
		return err
	}
	defer l.Close()
	where := "embedded log in " + filepath.Join(f.data, "log")
	if len(f.kafka) > 0 {
		where = "Kafka at " + strings.Join(f.kafka, ",")
	}
	fmt.Fprintf(out, "goutong selfcheck: %s, run %s\n", where, runID)
	if err := l.EnsureTopics(ctx, standardTopics(f.partitions)...); err != nil {
		return err
	}

	codec := notification.NewCodec()
	fmt.Fprintln(out, "\ndecoder on malformed input (each names the field):")
	for _, bad := range []string{
		`{"channel":"fax","recipient":"+1","template":"otp"}`,
		`{"channel":"sms","template":"otp"}`,
		`{"channel":"sms","recipient":"+1","template":"otp","priority":"urgent"}`,
		`{"channel":"sms","recipient":"+1","template":"otp","expires_at":"in 5 minutes"}`,
	} {
		_, err := codec.Decode([]byte(bad))
		fmt.Fprintf(out, "  %-78s -> %v\n", bad, err)
	}

	// Produce.
	samples := sampleNotifications(runID)
	recs := make([]partition.Record, 0, f.batch)
	var buf []byte
	start := time.Now()
	produced := 0
	for produced < f.count {
		recs = recs[:0]
		buf = buf[:0]
		for len(recs) < f.batch && produced+len(recs) < f.count {
			n := *samples[(produced+len(recs))%len(samples)]
			seq := produced + len(recs)
			n.ID = notification.NewID()
			// The samples repeat; without a key of their own, the default key
			// would rightly call every repeat a duplicate of the first.
			n.IdempotencyKey = fmt.Sprintf("selfcheck-%s-%d", runID, seq)
			if n.Template != "" {
				n.Vars = map[string]string{"code": fmt.Sprintf("%06d", seq%1_000_000)}
			}
			n.Prepare(time.Now())
			if err := codec.Validate(&n); err != nil {
				return fmt.Errorf("sample notification invalid: %w", err)
			}
			at := len(buf)
			buf = codec.AppendEncode(buf, &n)
			recs = append(recs, partition.Record{Topic: selfcheckTopic, Key: []byte(n.IdempotencyKey), Value: buf[at:len(buf):len(buf)]})
		}
		if err := l.Produce(ctx, recs); err != nil {
			return err
		}
		produced += len(recs)
	}
	produceDur := time.Since(start)

	// Consume everything up to what this run produced, decoding each record.
	start = time.Now()
	byChannel := map[notification.Channel]int{}
	byPriority := map[notification.Priority]int{}
	seen, malformed := 0, 0
	commits := map[partition.TopicPartition]int64{}
	pollCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for seen < f.count {
		batch, err := l.Poll(pollCtx, 10_000)
		if err != nil {
			return fmt.Errorf("poll after %d of this run's %d records: %w", seen, f.count, err)
		}
		for i := range batch {
			r := &batch[i]
			commits[partition.TopicPartition{Topic: r.Topic, Partition: r.Partition}] = r.Offset + 1
			n, err := codec.Decode(r.Value)
			if err != nil {
				malformed++
				continue
			}
			if n.Metadata["selfcheck_run"] != runID {
				continue // an earlier run's records left uncommitted
			}
			seen++
			byChannel[n.Channel]++
			byPriority[n.Priority]++
		}
		if err := l.Commit(ctx, commits); err != nil {
			return err
		}
	}
	consumeDur := time.Since(start)

	lag, err := l.Lag(ctx)
	if err != nil {
		return err
	}
	var totalLag int64
	for _, v := range lag {
		totalLag += v
	}
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "produced\t%d\tin %v\t%.0f records/s (durable on return)\n", produced, produceDur.Round(time.Millisecond), float64(produced)/produceDur.Seconds())
	fmt.Fprintf(tw, "consumed + decoded\t%d\tin %v\t%.0f records/s\n", seen, consumeDur.Round(time.Millisecond), float64(seen)/consumeDur.Seconds())
	fmt.Fprintf(tw, "malformed\t%d\t\t\n", malformed)
	fmt.Fprintf(tw, "group lag after commit\t%d\t\t\n", totalLag)
	tw.Flush()
	fmt.Fprint(out, "by channel:")
	for _, ch := range []notification.Channel{notification.SMS, notification.Email, notification.Push, notification.Webhook} {
		fmt.Fprintf(out, "  %s %d", ch, byChannel[ch])
	}
	fmt.Fprint(out, "\nby priority:")
	for p := notification.Critical; p <= notification.Bulk; p++ {
		fmt.Fprintf(out, "  %s %d", p, byPriority[p])
	}
	fmt.Fprintln(out)
	if seen != f.count || totalLag != 0 {
		return fmt.Errorf("selfcheck failed: read %d of %d, lag %d", seen, f.count, totalLag)
	}
	fmt.Fprintln(out, "selfcheck ok")
	return nil
}

// sampleNotifications returns one notification per channel, as a producer
// would write them (the same examples as docs/wire-format.md).
func sampleNotifications(runID string) []*notification.Notification {
	meta := map[string]string{"selfcheck_run": runID}
	exp := time.Now().Add(5 * time.Minute)
	return []*notification.Notification{
		{Tenant: "acme", Channel: notification.SMS, Priority: notification.Critical, Recipient: "+8613800138000",
			Template: "otp", ExpiresAt: exp, Metadata: meta},
		{Tenant: "acme", Channel: notification.Email, Priority: notification.Bulk, Recipient: "li.lei@example.com",
			Content: &notification.Content{Subject: "Double Eleven starts now", Body: "Up to 50% off until midnight."}, Metadata: meta},
		{Tenant: "acme", Channel: notification.Push, Priority: notification.High, Recipient: "fcm-token-3f9a",
			Template: "order_shipped", Metadata: meta},
		{Tenant: "acme", Channel: notification.Webhook, Priority: notification.Normal, Recipient: "https://hooks.example.com/orders",
			Content: &notification.Content{Body: `{"order":"A-1001","state":"paid"}`}, Metadata: meta},
	}
}
