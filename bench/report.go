package bench

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"io"
	"math"
	"sort"

	chart "github.com/wcharczuk/go-chart/v2"
	"github.com/wcharczuk/go-chart/v2/drawing"
)

//go:embed report.html.tmpl
var reportTemplate string

var reportTmpl = template.Must(template.New("report").Funcs(template.FuncMap{
	"f0": func(v float64) string { return fmt.Sprintf("%.0f", v) },
	"f1": func(v float64) string { return fmt.Sprintf("%.1f", v) },
}).Parse(reportTemplate))

// palette colours the series of a chart in order.
var palette = []drawing.Color{
	{R: 31, G: 119, B: 180, A: 255}, {R: 255, G: 127, B: 14, A: 255}, {R: 44, G: 160, B: 44, A: 255},
	{R: 214, G: 39, B: 40, A: 255}, {R: 148, G: 103, B: 189, A: 255}, {R: 140, G: 86, B: 75, A: 255},
}

// line is one series of a chart.
type line struct {
	name string
	ys   []float64
}

// svgChart renders a line chart of the series over xs as inline SVG. A
// chart without two samples says so instead of failing the report.
func svgChart(title, yName string, xs []float64, lines []line) template.HTML {
	if len(xs) < 2 || len(lines) == 0 {
		return template.HTML(`<p class="empty">` + template.HTMLEscapeString(title) + `: fewer than two samples</p>`)
	}
	top := 0.0
	var series []chart.Series
	for i, l := range lines {
		for _, y := range l.ys {
			if !math.IsNaN(y) {
				top = max(top, y)
			}
		}
		series = append(series, chart.ContinuousSeries{Name: l.name, XValues: xs, YValues: l.ys,
			Style: chart.Style{StrokeColor: palette[i%len(palette)], StrokeWidth: 2}})
	}
	if top <= 0 {
		top = 1
	}
	g := chart.Chart{Title: title, Width: 900, Height: 300,
		Background: chart.Style{Padding: chart.Box{Top: 40, Left: 20, Right: 20, Bottom: 30}},
		XAxis:      chart.XAxis{Name: "seconds", Range: &chart.ContinuousRange{Min: xs[0], Max: xs[len(xs)-1]}},
		YAxis: chart.YAxis{Name: yName, Range: &chart.ContinuousRange{Min: 0, Max: top * 1.1},
			ValueFormatter: func(v any) string { return fmt.Sprintf("%.0f", v) }},
		Series: series}
	g.Elements = []chart.Renderable{chart.Legend(&g)}
	var buf bytes.Buffer
	if err := g.Render(chart.SVG, &buf); err != nil {
		return template.HTML(`<p class="empty">` + template.HTMLEscapeString(title+": "+err.Error()) + `</p>`)
	}
	// The SVG is ours: numbers, and names Validate limited to [a-z0-9._-].
	return template.HTML(buf.String())
}

type scenarioView struct {
	*ScenarioResult
	Throughput, Latency, Backlog template.HTML
}

// WriteHTML writes a self-contained report (inline CSS and SVG, no
// scripts, nothing fetched) with each scenario's charts and tables.
func (r *Results) WriteHTML(w io.Writer) error {
	views := make([]scenarioView, len(r.Scenarios))
	for i := range r.Scenarios {
		s := &r.Scenarios[i]
		xs := make([]float64, len(s.Series))
		acc, del, backlog, queued, lag := make([]float64, len(xs)), make([]float64, len(xs)), make([]float64, len(xs)),
			make([]float64, len(xs)), make([]float64, len(xs))
		p99 := map[string][]float64{}
		for j, p := range s.Series {
			xs[j], acc[j], del[j] = p.T, p.AcceptedPerSec, p.DeliveredPerSec
			backlog[j], queued[j], lag[j] = float64(p.Backlog), float64(p.Queued), float64(p.Lag)
		}
		var names []string
		for _, l := range s.Loads {
			names = append(names, l.Name)
			ys := make([]float64, len(xs))
			last := 0.0
			for j, p := range s.Series {
				// An interval with no ack of this load repeats the last
				// value: a gap is not a latency of zero.
				if v, ok := p.P99ms[l.Name]; ok {
					last = v
				}
				ys[j] = last
			}
			p99[l.Name] = ys
		}
		sort.Strings(names)
		var lat []line
		for _, n := range names {
			lat = append(lat, line{n + " p99", p99[n]})
		}
		views[i] = scenarioView{ScenarioResult: s,
			Throughput: svgChart("Throughput", "notifications/s", xs, []line{{"accepted/s", acc}, {"delivered/s", del}}),
			Latency:    svgChart("Latency, acceptance to provider ack (p99 per interval)", "ms", xs, lat),
			Backlog:    svgChart("Backlog", "notifications", xs, []line{{"accepted, not finished", backlog}, {"in the rings", queued}, {"consumer lag", lag}}),
		}
	}
	return reportTmpl.Execute(w, struct {
		*Results
		Views []scenarioView
	}{r, views})
}
