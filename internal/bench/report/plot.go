package report

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"os"
	"slices"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Series is one implementation's measurements in a panel, in run order.
type Series struct {
	Name   string
	Color  color.RGBA
	Values []float64
}

// Panel is one small chart: every run as a dot, each series' median as
// a line.
type Panel struct {
	Title  string
	Unit   string
	Series []Series
}

// Colours for the series, told apart also in grey.
var (
	Blue   = color.RGBA{0x1f, 0x5f, 0xbf, 0xff}
	Orange = color.RGBA{0xe0, 0x7b, 0x00, 0xff}
)

const (
	panelW, panelH = 420, 240
	marginL        = 64
	marginR        = 16
	marginT        = 28
	marginB        = 28
)

// WritePlot draws panels in a grid of cols columns under title, with a
// legend, and writes the PNG to path.
func WritePlot(path, title string, cols int, panels []Panel) error {
	rows := (len(panels) + cols - 1) / cols
	w, h := cols*panelW, rows*panelH+44
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(img, img.Bounds(), image.NewUniform(color.White), image.Point{}, draw.Src)
	text(img, 12, 20, color.Black, title)
	// The legend, from the first panel's series.
	if len(panels) > 0 {
		x := 12
		for _, s := range panels[0].Series {
			fillRect(img, x, 30, x+10, 40, s.Color)
			text(img, x+14, 40, color.Black, s.Name)
			x += 14 + 7*len(s.Name) + 24
		}
	}
	for i, p := range panels {
		drawPanel(img, (i%cols)*panelW, 44+(i/cols)*panelH, p)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func drawPanel(img *image.RGBA, x0, y0 int, p Panel) {
	grey := color.RGBA{0xcc, 0xcc, 0xcc, 0xff}
	text(img, x0+marginL, y0+18, color.Black, p.Title)
	top := 0.0
	runs := 0
	for _, s := range p.Series {
		for _, v := range s.Values {
			top = math.Max(top, v)
		}
		runs = max(runs, len(s.Values))
	}
	top = niceCeil(top * 1.05)
	left, right := x0+marginL, x0+panelW-marginR
	upper, lower := y0+marginT, y0+panelH-marginB
	yOf := func(v float64) int { return lower - int(math.Round(v/top*float64(lower-upper))) }
	for i := 0; i <= 4; i++ {
		v := top * float64(i) / 4
		y := yOf(v)
		hline(img, left, right, y, grey)
		label := fmt.Sprintf("%g %s", v, p.Unit)
		text(img, left-8-7*len(label), y+4, color.Black, label)
	}
	vline(img, left, upper, lower, color.Black)
	hline(img, left, right, lower, color.Black)
	text(img, left, lower+18, color.Black, fmt.Sprintf("run 1 to %d", runs))
	if runs == 0 {
		return
	}
	step := float64(right-left-20) / float64(max(runs-1, 1))
	for k, s := range p.Series {
		off := (k*2 - len(p.Series) + 1) * 2 // side by side, not on top of each other
		for i, v := range s.Values {
			x := left + 10 + int(math.Round(float64(i)*step)) + off
			fillRect(img, x-2, yOf(v)-2, x+3, yOf(v)+3, s.Color)
		}
		if len(s.Values) > 0 {
			med := median(s.Values)
			y := yOf(med)
			for x := left; x < right; x += 6 {
				hline(img, x, min(x+3, right), y, s.Color)
			}
		}
	}
}

func median(vs []float64) float64 {
	s := slices.Clone(vs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func text(img *image.RGBA, x, y int, c color.Color, s string) {
	d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

func fillRect(img *image.RGBA, x0, y0, x1, y1 int, c color.Color) {
	draw.Draw(img, image.Rect(x0, y0, x1, y1), image.NewUniform(c), image.Point{}, draw.Src)
}

func hline(img *image.RGBA, x0, x1, y int, c color.Color) { fillRect(img, x0, y, x1, y+1, c) }
func vline(img *image.RGBA, x, y0, y1 int, c color.Color) { fillRect(img, x, y0, x+1, y1, c) }
