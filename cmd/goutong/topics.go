package main

import (
	"fmt"
	"path/filepath"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/goutong/goutong/wal"
)

func newTopics() *cobra.Command {
	var data string
	cmd := &cobra.Command{
		Use:   "topics",
		Short: "List the embedded log's topics with their partitions, offsets, retention and committed groups",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w, err := wal.Open(filepath.Join(data, "log"), wal.WithRetentionInterval(0))
			if err != nil {
				return err
			}
			defer w.Close()
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "TOPIC\tPARTITION\tSTART\tEND\tCODEC\tFSYNC\tRETENTION")
			for _, t := range w.Topics() {
				cfg, _ := w.TopicConfig(t)
				for p := range cfg.Partitions {
					start, end, err := w.Offsets(t, p)
					if err != nil {
						return err
					}
					ret := "forever"
					if cfg.RetentionAge > 0 {
						ret = cfg.RetentionAge.String()
					}
					fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\t%s\n", t, p, start, end, cfg.Codec, cfg.Fsync, ret)
				}
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&data, "data", "./data", "directory of the embedded log")
	return cmd
}
