package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/goutong/goutong/engine"
)

func newReconcile() *cobra.Command {
	var c client
	var from, to, out string
	var redrive []string
	cmd := &cobra.Command{
		Use:   "reconcile",
		Short: "Compare what was sent with the providers' receipts for a window (admin key)",
		Long: `reconcile asks a running server to compare, for a window of notifications
(default: yesterday, UTC), what Goutong recorded as sent with the receipts the
providers returned: sent without a receipt past the channel's deadline
(missing-receipt), receipts that came late, twice, contradicting each other or
Goutong (late-receipt, duplicate-receipt, state-mismatch, receipt-not-sent),
receipts for ids Goutong never had (unknown-receipt), and sends that went out
twice (duplicate-send). It prints the summary and writes every difference as a
JSON line to --out. With --redrive, the differences of the kinds named are
re-enqueued as new notifications (linked by metadata redrive_of), never one
past its expiry. Runs are kept on the server: goutong reconcile list.`,
		Example: `  goutong reconcile
  goutong reconcile --from 2026-11-24 --to 2026-11-25 --out diffs.jsonl
  goutong reconcile --from 2026-11-24T10:00:00Z --to 2026-11-24T12:00:00Z --redrive missing-receipt`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			body := map[string]any{}
			for name, v := range map[string]string{"from": from, "to": to} {
				if v == "" {
					continue
				}
				t, err := parseWhen(v)
				if err != nil {
					return fmt.Errorf("--%s: %w", name, err)
				}
				body[name] = t
			}
			for _, k := range redrive {
				if !slices.Contains(engine.RedriveKinds, k) {
					return fmt.Errorf("--redrive %q: want some of %s", k, strings.Join(engine.RedriveKinds, ", "))
				}
			}
			if len(redrive) > 0 {
				body["redrive"] = redrive
			}
			b, _ := json.Marshal(body)
			raw, err := c.request("POST", "/v1/admin/reconcile", "application/json", bytes.NewReader(b))
			if err != nil {
				return err
			}
			var run engine.ReconcileRun
			if err := json.Unmarshal(raw, &run); err != nil {
				return fmt.Errorf("the server's answer: %w", err)
			}
			diffs, err := c.request("GET", "/v1/admin/reconcile/"+run.ID+"/differences", "", nil)
			if err != nil {
				return err
			}
			if out == "" {
				out = "reconcile-" + run.Options.From.UTC().Format("2006-01-02T150405") + ".jsonl"
			}
			if err := os.WriteFile(out, diffs, 0o644); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			r := run.Report
			fmt.Fprintf(w, "run %s: %s .. %s\n", run.ID, r.From.UTC().Format(time.RFC3339), r.To.UTC().Format(time.RFC3339))
			fmt.Fprintf(w, "notifications %d, sent %d, with a receipt %d\n", r.Notifications, r.Sent, r.WithReceipt)
			kinds := make([]string, 0, len(r.Differences))
			total := 0
			for k, n := range r.Differences {
				kinds = append(kinds, k)
				total += n
			}
			slices.Sort(kinds)
			for _, k := range kinds {
				fmt.Fprintf(w, "  %-18s %d\n", k, r.Differences[k])
			}
			fmt.Fprintf(w, "differences %d written to %s", total, out)
			if len(redrive) > 0 {
				fmt.Fprintf(w, "; redriven %d", r.Redriven)
			}
			fmt.Fprintln(w)
			if run.Error != "" {
				return fmt.Errorf("the run stopped: %s", run.Error)
			}
			return nil
		},
	}
	addClientFlags(cmd, &c)
	f := cmd.Flags()
	f.StringVar(&from, "from", "", "window start: RFC 3339 or a date (default: yesterday 00:00 UTC)")
	f.StringVar(&to, "to", "", "window end, exclusive (default: today 00:00 UTC)")
	f.StringVar(&out, "out", "", "where the differences go, one JSON object per line (default reconcile-<from>.jsonl)")
	f.StringSliceVar(&redrive, "redrive", nil, "re-enqueue differences of these kinds: "+strings.Join(engine.RedriveKinds, ", "))

	var lc client
	list := &cobra.Command{
		Use:   "list",
		Short: "List the reconciliation runs the server kept, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return lc.do(cmd.OutOrStdout(), "GET", "/v1/admin/reconcile", "", nil)
		},
	}
	addClientFlags(list, &lc)
	cmd.AddCommand(list)
	return cmd
}

// parseWhen reads RFC 3339 or a plain date (midnight UTC).
func parseWhen(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Parse("2006-01-02", s)
}
