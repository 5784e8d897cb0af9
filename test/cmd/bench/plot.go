package main

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"strings"
)

// A 3×5 pixel font for the plot's labels (digits, upper-case letters and a few signs); no dependency.
var glyphs = map[rune]string{
	'0': "111101101101111", '1': "010110010010111", '2': "111001111100111", '3': "111001111001111",
	'4': "101101111001001", '5': "111100111001111", '6': "111100111101111", '7': "111001001001001",
	'8': "111101111101111", '9': "111101111001111", 'A': "010101111101101", 'B': "110101110101110",
	'C': "111100100100111", 'D': "110101101101110", 'E': "111100111100111", 'F': "111100111100100",
	'G': "111100101101111", 'H': "101101111101101", 'I': "111010010010111", 'J': "001001001101111",
	'K': "101101110101101", 'L': "100100100100111", 'M': "101111111101101", 'N': "110101101101101",
	'O': "111101101101111", 'P': "111101111100100", 'Q': "111101101111001", 'R': "110101110101101",
	'S': "111100111001111", 'T': "111010010010010", 'U': "101101101101111", 'V': "101101101101010",
	'W': "101101111111101", 'X': "101101010101101", 'Y': "101101010010010", 'Z': "111001010100111",
	'.': "000000000000010", '-': "000000111000000", '+': "000010111010000", '=': "000111000111000",
	'(': "010100100100010", ')': "010001001001010", '/': "001001010100100", '*': "000101010101000",
	':': "000010000010000", ',': "000000000010100",
}

type canvas struct{ *image.RGBA }

func (c canvas) text(x, y int, s string, col color.Color, scale int) {
	for _, r := range strings.ToUpper(s) {
		g, ok := glyphs[r]
		if ok {
			for i, bit := range g {
				if bit == '1' {
					c.fill(x+(i%3)*scale, y+(i/3)*scale, scale, scale, col)
				}
			}
		}
		x += 4 * scale
	}
}

func (c canvas) fill(x, y, w, h int, col color.Color) {
	for i := x; i < x+w; i++ {
		for j := y; j < y+h; j++ {
			c.Set(i, j, col)
		}
	}
}

func (c canvas) line(x0, y0, x1, y1 int, col color.Color, width int) {
	dx, dy := math.Abs(float64(x1-x0)), math.Abs(float64(y1-y0))
	steps := int(max(dx, dy))
	if steps == 0 {
		steps = 1
	}
	for i := 0; i <= steps; i++ {
		x := x0 + (x1-x0)*i/steps
		y := y0 + (y1-y0)*i/steps
		c.fill(x-width/2, y-width/2, width, width, col)
	}
}

// writePlot draws reset→new VMI latency (p50, p99), the write floor and the 2×floor+reconcile budgets (for the
// cheapest write and for a runpolicy.io VirtualMachine write)
// against N (log scale), in milliseconds (log scale).
func writePlot(path string, rs []result) error {
	const W, H, left, right, top, bottom = 900, 560, 90, 30, 60, 70
	img := canvas{image.NewRGBA(image.Rect(0, 0, W, H))}
	img.fill(0, 0, W, H, color.White)
	type series struct {
		name string
		col  color.RGBA
		val  func(result) float64
	}
	ss := []series{
		{"RESET TO NEW VMI P99", color.RGBA{200, 30, 30, 255}, func(r result) float64 { return r.ResetP99 * 1000 }},
		{"RESET TO NEW VMI P50", color.RGBA{30, 60, 200, 255}, func(r result) float64 { return r.ResetP50 * 1000 }},
		{"KUBEVIRT ALWAYS: RESET TO NEW VMI P99", color.RGBA{240, 120, 120, 255}, func(r result) float64 { return r.KubeVirt.ResetP99 * 1000 }},
		{"KUBEVIRT ALWAYS: RESET TO NEW VMI P50", color.RGBA{120, 160, 240, 255}, func(r result) float64 { return r.KubeVirt.ResetP50 * 1000 }},
		{"VMI END TO START CALL P99 (OPERATOR)", color.RGBA{230, 140, 0, 255}, func(r result) float64 { return r.FinalToStartP99 * 1000 }},
		{"2*FLOOR+RECONCILE", color.RGBA{30, 150, 30, 255}, func(r result) float64 { return (2*r.FloorP50 + r.ReconcileMean) * 1000 }},
		{"2*VM WRITE FLOOR+RECONCILE", color.RGBA{140, 60, 160, 255}, func(r result) float64 { return (2*r.VMFloorP50 + r.ReconcileMean) * 1000 }},
		{"WRITE FLOOR P50", color.RGBA{120, 120, 120, 255}, func(r result) float64 { return r.FloorP50 * 1000 }},
	}
	var pts []result
	for _, r := range rs {
		if r.Resets > 0 {
			pts = append(pts, r)
		}
	}
	minN, maxN, minY, maxY := math.Inf(1), math.Inf(-1), math.Inf(1), math.Inf(-1)
	for _, r := range pts {
		minN, maxN = math.Min(minN, float64(r.N)), math.Max(maxN, float64(r.N))
		for _, s := range ss {
			if v := s.val(r); v > 0 {
				minY, maxY = math.Min(minY, v), math.Max(maxY, v)
			}
		}
	}
	black := color.RGBA{0, 0, 0, 255}
	img.text(left, 15, "RUNPOLICY: GUEST RESET TO NEW VMI LATENCY (MS, LOG) VS N VMS (LOG)", black, 2)
	if len(pts) == 0 || math.IsInf(minY, 1) {
		img.text(left, H/2, "NO DATA", black, 3)
		return save(path, img)
	}
	lx0, lx1 := math.Log10(minN)-0.15, math.Log10(maxN)+0.15
	ly0, ly1 := math.Floor(math.Log10(minY)), math.Ceil(math.Log10(maxY))
	if ly1 == ly0 {
		ly1++
	}
	px := func(n float64) int { return left + int((math.Log10(n)-lx0)/(lx1-lx0)*float64(W-left-right)) }
	py := func(v float64) int { return H - bottom - int((math.Log10(v)-ly0)/(ly1-ly0)*float64(H-top-bottom)) }
	grid := color.RGBA{225, 225, 225, 255}
	for e := ly0; e <= ly1; e++ {
		for _, m := range []float64{1, 2, 5} {
			v := m * math.Pow(10, e)
			if math.Log10(v) > ly1 {
				break
			}
			y := py(v)
			img.line(left, y, W-right, y, grid, 1)
			img.text(10, y-5, trimNum(v), black, 2)
		}
	}
	img.line(left, top, left, H-bottom, black, 2)
	img.line(left, H-bottom, W-right, H-bottom, black, 2)
	for _, r := range pts {
		x := px(float64(r.N))
		img.line(x, H-bottom, x, H-bottom+6, black, 2)
		img.text(x-10, H-bottom+12, fmt.Sprint(r.N), black, 2)
	}
	img.text(W/2-40, H-25, "N (VMS)", black, 2)
	for i, s := range ss {
		var prevX, prevY int
		for j, r := range pts {
			v := s.val(r)
			if v <= 0 {
				continue
			}
			x, y := px(float64(r.N)), py(v)
			img.fill(x-4, y-4, 9, 9, s.col)
			if j > 0 && prevX != 0 {
				img.line(prevX, prevY, x, y, s.col, 2)
			}
			prevX, prevY = x, y
		}
		lyy := top + 5 + i*16
		img.fill(W-right-330, lyy, 20, 8, s.col)
		img.text(W-right-302, lyy-1, s.name, black, 2)
	}
	return save(path, img)
}

func trimNum(v float64) string {
	if v >= 1 {
		return fmt.Sprintf("%.0f", v)
	}
	return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.3f", v), "0"), ".")
}

func save(path string, img canvas) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}
