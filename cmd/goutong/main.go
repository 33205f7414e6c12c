// Command goutong is the one Goutong binary. It stays thin: flags and
// config in, calls into the packages out.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRoot().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "goutong:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "goutong",
		Short:         "Goutong dispatches notifications (SMS, e-mail, push, webhooks) through providers' HTTP APIs",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newServe(), newSend(), newStatus(), newDLQ(), newSelfcheck(), newTopics(), newMockProvider(), newBench(), newPlan(), newReconcile(), newSnapshot())
	return root
}
