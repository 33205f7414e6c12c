package engine

import (
	"fmt"

	"github.com/goutong/goutong/notification"
)

// Picker chooses which priority lane a channel's dispatcher serves next.
// Critical is strict: whenever it has work it goes first, so a
// verification code never waits behind a marketing burst. The other lanes
// share what is left by smooth weighted round-robin (nginx's algorithm:
// each pick adds every waiting lane's weight to its credit, takes the lane
// with the most credit and charges it the total), so bulk gets its share
// and never starves, and the picks interleave rather than come in runs.
type Picker struct {
	weights [notification.NumPriorities]int
	credit  [notification.NumPriorities]int
}

// DefaultWeights give high, normal and bulk 6:3:1 of what critical leaves.
var DefaultWeights = map[notification.Priority]int{notification.High: 6, notification.Normal: 3, notification.Bulk: 1}

// NewPicker takes weights for high, normal and bulk; each must be at
// least 1 so that no lane starves.
func NewPicker(weights map[notification.Priority]int) (*Picker, error) {
	p := &Picker{}
	for _, pr := range []notification.Priority{notification.High, notification.Normal, notification.Bulk} {
		w := weights[pr]
		if w < 1 {
			return nil, fmt.Errorf("engine: weight of %s must be at least 1, got %d", pr, w)
		}
		p.weights[pr.Index()] = w
	}
	return p, nil
}

// Pick returns the lane to serve given each lane's queued count, and false
// when every lane is empty.
func (p *Picker) Pick(queued [notification.NumPriorities]int) (notification.Priority, bool) {
	if queued[notification.Critical.Index()] > 0 {
		return notification.Critical, true
	}
	best, total := -1, 0
	for i := notification.High.Index(); i < notification.NumPriorities; i++ {
		if queued[i] == 0 {
			continue
		}
		p.credit[i] += p.weights[i]
		total += p.weights[i]
		if best < 0 || p.credit[i] > p.credit[best] {
			best = i
		}
	}
	if best < 0 {
		return 0, false
	}
	p.credit[best] -= total
	return notification.Priority(best + 1), true
}
