package healthcheck

import "time"

// timeHeap is a binary heap of values by time, the earliest first: the
// runner's checks by when each is next due, the prober's checks by their
// deadlines. The times sit in the heap itself, as durations from its
// epoch (the first time pushed): a sift then compares numbers in one
// array, not times read through pointers to thousands of values scattered
// over memory, which was most of what a sift cost, and a push boxes
// nothing. The zero value is an empty heap.
type timeHeap[V any] struct {
	epoch time.Time
	items []timed[V]
}

type timed[V any] struct {
	at time.Duration // from the epoch
	v  V
}

func (h *timeHeap[V]) len() int { return len(h.items) }

// head is the earliest entry; the heap must not be empty.
func (h *timeHeap[V]) head() (time.Time, V) {
	return h.epoch.Add(h.items[0].at), h.items[0].v
}

// clear empties the heap, keeping its memory.
func (h *timeHeap[V]) clear() {
	clear(h.items)
	h.items = h.items[:0]
}

// push adds v at at and reports whether it is the new head.
func (h *timeHeap[V]) push(at time.Time, v V) bool {
	if h.epoch.IsZero() {
		h.epoch = at
	}
	e := timed[V]{at.Sub(h.epoch), v}
	h.items = append(h.items, e)
	items := h.items
	i := len(items) - 1
	for i > 0 {
		parent := (i - 1) / 2
		if items[parent].at <= e.at {
			break
		}
		items[i] = items[parent]
		i = parent
	}
	items[i] = e
	return i == 0
}

// pop removes the head.
func (h *timeHeap[V]) pop() {
	items := h.items
	n := len(items) - 1
	last := items[n]
	items[n] = timed[V]{}
	items = items[:n]
	h.items = items
	if n == 0 {
		return
	}
	i := 0
	for {
		child := 2*i + 1
		if child >= n {
			break
		}
		if r := child + 1; r < n && items[r].at < items[child].at {
			child = r
		}
		if last.at <= items[child].at {
			break
		}
		items[i] = items[child]
		i = child
	}
	items[i] = last
}
