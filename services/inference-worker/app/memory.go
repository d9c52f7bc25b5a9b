package app

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/modelport/modelport/libs/config"
)

// sizeSetting reads a size in bytes: a whole number, or one with a unit
// (KiB, MiB, GiB, TiB, or KB, MB, GB, TB in powers of ten). Unset, it is
// what def finds, 0 when def finds nothing.
func sizeSetting(getenv config.Getenv, name string, def func() int64) (int64, error) {
	v := strings.TrimSpace(getenv(name))
	if v == "" {
		return def(), nil
	}
	n, err := parseSize(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	return n, nil
}

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1},
}

func parseSize(v string) (int64, error) {
	num, mult := v, int64(1)
	for _, u := range sizeUnits {
		if n, ok := strings.CutSuffix(v, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 || f*float64(mult) > 1<<62 {
		return 0, fmt.Errorf("%q is not a size such as 64GiB or 68719476736", v)
	}
	return int64(f * float64(mult)), nil
}

// machineMemory is the machine's memory as Linux counts it; 0 elsewhere.
func machineMemory() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			f := strings.Fields(rest)
			if len(f) == 2 && f[1] == "kB" {
				if kb, err := strconv.ParseInt(f[0], 10, 64); err == nil {
					return kb << 10
				}
			}
		}
	}
	return 0
}

// gpuMemory asks nvidia-smi for the smallest GPU's memory; 0 without it.
func gpuMemory() int64 {
	out, err := exec.Command("nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits").Output()
	if err != nil {
		return 0
	}
	var least int64
	for _, line := range strings.Fields(string(out)) {
		mib, err := strconv.ParseInt(line, 10, 64)
		if err == nil && mib > 0 && (least == 0 || mib<<20 < least) {
			least = mib << 20
		}
	}
	return least
}
