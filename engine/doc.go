// Package engine is Goutong's pipeline from the log to the providers:
// partition consumers, bounded lock-free rings per channel and priority, a
// priority dispatcher per channel, token buckets with a share reserved for
// urgent traffic, provider batching, retries with backoff, dead letters and
// watermark commits.
//
// This first part holds the pieces the pipeline is assembled from, each
// with its own tests: Ring (the bounded single-producer, single-consumer
// queue between router and dispatcher), Watermark (which offset of a
// partition may be committed when records finish out of order), Picker
// (which priority lane a dispatcher serves next), ChannelLimit (a channel's
// rate with a reserved share) and Backoff (retry delays).
package engine
