package ewssim

import "time"

// clock converts Exchange's protocol durations (status frequency, callback
// retry back-off, the drop window) to wall-clock durations. Tests compress
// time with it so that a schedule measured in minutes runs in milliseconds;
// everything the simulator times on Exchange's behalf goes through it.
type clock struct {
	// perMinute is the wall-clock length of one Exchange minute; zero or
	// less means real time.
	perMinute time.Duration
}

// real returns the wall-clock duration of the Exchange duration d.
func (c clock) real(d time.Duration) time.Duration {
	if c.perMinute <= 0 {
		return d
	}
	return time.Duration(float64(d) * float64(c.perMinute) / float64(time.Minute))
}

// since returns the Exchange time elapsed since the wall-clock instant t.
func (c clock) since(t time.Time) time.Duration {
	d := time.Since(t)
	if c.perMinute <= 0 {
		return d
	}
	return time.Duration(float64(d) * float64(time.Minute) / float64(c.perMinute))
}
