package routing_test

import (
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/router/internal/routing"
)

func service(id, access string) state.Service {
	return state.Service{ID: id, OwnerID: "8105f7322477", Name: id, AccessName: access, Status: state.StatusRunning}
}

func ready(serviceID, id string) state.Instance {
	return state.Instance{
		ID: id, ServiceID: serviceID, WorkerID: "w1", Engine: "simulator",
		Endpoint: "http://127.0.0.1:9000/" + id + "/v1", Status: state.InstanceReady,
	}
}

// hold picks the instance id of service svc by excluding every other one,
// and returns the release function.
func hold(t *testing.T, tb *routing.Table, svc, id string, all []string) func() {
	t.Helper()
	var exclude []string
	for _, other := range all {
		if other != id {
			exclude = append(exclude, other)
		}
	}
	e, release, ok := tb.Pick(svc, exclude...)
	if !ok || e.Instance.ID != id {
		t.Fatalf("hold %s: got %v, ok %v", id, e, ok)
	}
	return release
}

func TestResolve(t *testing.T) {
	tests := []struct {
		name   string
		apply  func(tb *routing.Table)
		lookup string
		wantID string // "" means the name must not resolve
	}{
		{
			name:   "empty table",
			apply:  func(*routing.Table) {},
			lookup: "u-o/a",
		},
		{
			name:   "put service",
			apply:  func(tb *routing.Table) { tb.PutService(service("s1", "u-o/a")) },
			lookup: "u-o/a",
			wantID: "s1",
		},
		{
			name: "deleted service",
			apply: func(tb *routing.Table) {
				tb.PutService(service("s1", "u-o/a"))
				tb.DeleteService("s1")
			},
			lookup: "u-o/a",
		},
		{
			name: "access name changed: old name gone",
			apply: func(tb *routing.Table) {
				tb.PutService(service("s1", "u-o/a"))
				tb.PutService(service("s1", "u-o/b"))
			},
			lookup: "u-o/a",
		},
		{
			name: "access name changed: new name resolves",
			apply: func(tb *routing.Table) {
				tb.PutService(service("s1", "u-o/a"))
				tb.PutService(service("s1", "u-o/b"))
			},
			lookup: "u-o/b",
			wantID: "s1",
		},
		{
			name: "access name changed then deleted",
			apply: func(tb *routing.Table) {
				tb.PutService(service("s1", "u-o/a"))
				tb.PutService(service("s1", "u-o/b"))
				tb.DeleteService("s1")
			},
			lookup: "u-o/b",
		},
		{
			name: "deleting one service keeps another",
			apply: func(tb *routing.Table) {
				tb.PutService(service("s1", "u-o/a"))
				tb.PutService(service("s2", "u-o/b"))
				tb.DeleteService("s1")
			},
			lookup: "u-o/b",
			wantID: "s2",
		},
		{
			name: "deleting an unknown service changes nothing",
			apply: func(tb *routing.Table) {
				tb.PutService(service("s1", "u-o/a"))
				tb.DeleteService("nope")
			},
			lookup: "u-o/a",
			wantID: "s1",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tb := routing.NewTable()
			tc.apply(tb)
			s, ok := tb.Resolve(tc.lookup)
			if got, want := ok, tc.wantID != ""; got != want {
				t.Fatalf("Resolve(%q) ok = %v, want %v", tc.lookup, got, want)
			}
			if got, want := s.ID, tc.wantID; got != want {
				t.Errorf("Resolve(%q).ID = %q, want %q", tc.lookup, got, want)
			}
		})
	}
}

func TestServices(t *testing.T) {
	tb := routing.NewTable()
	tb.PutService(service("s1", "u-o/a"))
	tb.PutService(service("s2", "u-o/b"))
	tb.PutService(service("s1", "u-o/c")) // a replacement, not a third service
	tb.DeleteService("s2")
	var got []string
	for _, s := range tb.Services() {
		got = append(got, s.ID+"="+s.AccessName)
	}
	if want := []string{"s1=u-o/c"}; !slices.Equal(got, want) {
		t.Errorf("Services() = %v, want %v", got, want)
	}
}

func TestPutInstance(t *testing.T) {
	tests := []struct {
		name    string
		status  string
		wantOK  bool
		wantIDs []string
	}{
		{name: "ready stays", status: state.InstanceReady, wantOK: true, wantIDs: []string{"i1", "i2"}},
		{name: "starting removes", status: state.InstanceStarting, wantOK: true, wantIDs: []string{"i2"}},
		{name: "stopped removes", status: state.InstanceStopped, wantOK: true, wantIDs: []string{"i2"}},
		{name: "unknown status removes", status: "", wantOK: true, wantIDs: []string{"i2"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tb := routing.NewTable()
			tb.PutInstance(ready("s1", "i1"))
			tb.PutInstance(ready("s1", "i2"))
			in := ready("s1", "i1")
			in.Status = tc.status
			tb.PutInstance(in)

			got := pickable(tb, "s1")
			if !slices.Equal(got, tc.wantIDs) {
				t.Errorf("pickable instances = %v, want %v", got, tc.wantIDs)
			}
		})
	}
}

// pickable returns the IDs Pick can reach, sorted, by excluding each
// picked one in turn.
func pickable(tb *routing.Table, svc string) []string {
	var ids []string
	for {
		e, release, ok := tb.Pick(svc, ids...)
		if !ok {
			break
		}
		release()
		ids = append(ids, e.Instance.ID)
	}
	slices.Sort(ids)
	return ids
}

func TestPutInstanceLastNotReadyLeavesNothing(t *testing.T) {
	tb := routing.NewTable()
	tb.PutInstance(ready("s1", "i1"))
	in := ready("s1", "i1")
	in.Status = state.InstanceStopped
	tb.PutInstance(in)
	if e, _, ok := tb.Pick("s1"); ok {
		t.Fatalf("Pick after the only instance stopped = %s, want none", e.Instance.ID)
	}
}

func TestPutInstanceEndpoint(t *testing.T) {
	t.Run("same endpoint keeps the load", func(t *testing.T) {
		tb := routing.NewTable()
		tb.PutInstance(ready("s1", "i1"))
		e, release, _ := tb.Pick("s1")
		defer release()
		tb.PutInstance(ready("s1", "i1"))
		e2, release2, _ := tb.Pick("s1")
		defer release2()
		if e2 != e {
			t.Fatalf("re-put with the same endpoint replaced the endpoint record")
		}
		if got, want := e2.Outstanding(), int64(2); got != want {
			t.Errorf("Outstanding = %d, want %d", got, want)
		}
	})
	t.Run("new endpoint is used", func(t *testing.T) {
		tb := routing.NewTable()
		tb.PutInstance(ready("s1", "i1"))
		moved := ready("s1", "i1")
		moved.Endpoint = "http://127.0.0.1:9001/v1"
		tb.PutInstance(moved)
		e, release, ok := tb.Pick("s1")
		if !ok {
			t.Fatal("no instance after moving it")
		}
		release()
		if got, want := e.Instance.Endpoint, moved.Endpoint; got != want {
			t.Errorf("Endpoint = %q, want %q", got, want)
		}
		if got := pickable(tb, "s1"); !slices.Equal(got, []string{"i1"}) {
			t.Errorf("pickable = %v, want [i1] (no duplicate)", got)
		}
	})
}

func TestPickLeastOutstanding(t *testing.T) {
	all := []string{"a", "b", "c"}
	tests := []struct {
		name string
		load map[string]int // requests held per instance before the pick
		want string
	}{
		{name: "c idle", load: map[string]int{"a": 2, "b": 1}, want: "c"},
		{name: "b idle", load: map[string]int{"a": 1, "c": 3}, want: "b"},
		{name: "a least loaded", load: map[string]int{"a": 1, "b": 2, "c": 2}, want: "a"},
		{name: "c least of many", load: map[string]int{"a": 5, "b": 4, "c": 3}, want: "c"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tb := routing.NewTable()
			for _, id := range all {
				tb.PutInstance(ready("s1", id))
			}
			for id, n := range tc.load {
				for range n {
					defer hold(t, tb, "s1", id, all)()
				}
			}
			e, release, ok := tb.Pick("s1")
			if !ok {
				t.Fatal("Pick found nothing")
			}
			defer release()
			if got := e.Instance.ID; got != tc.want {
				t.Errorf("Pick = %s, want %s", got, tc.want)
			}
			if got, want := e.Outstanding(), int64(tc.load[tc.want]+1); got != want {
				t.Errorf("Outstanding after Pick = %d, want %d", got, want)
			}
		})
	}
}

func TestReleaseOnce(t *testing.T) {
	tb := routing.NewTable()
	tb.PutInstance(ready("s1", "i1"))
	e1, release1, _ := tb.Pick("s1")
	_, release2, _ := tb.Pick("s1")
	if got, want := e1.Outstanding(), int64(2); got != want {
		t.Fatalf("Outstanding after two picks = %d, want %d", got, want)
	}
	release1()
	release1()
	if got, want := e1.Outstanding(), int64(1); got != want {
		t.Errorf("Outstanding after releasing one pick twice = %d, want %d", got, want)
	}
	release2()
	release2()
	if got, want := e1.Outstanding(), int64(0); got != want {
		t.Errorf("Outstanding after releasing both = %d, want %d", got, want)
	}
}

func TestReleaseAfterDelete(t *testing.T) {
	tb := routing.NewTable()
	tb.PutInstance(ready("s1", "i1"))
	e, release, _ := tb.Pick("s1")
	tb.DeleteInstance("s1", "i1")
	release() // a request in flight finishes after its instance went away
	if got, want := e.Outstanding(), int64(0); got != want {
		t.Errorf("Outstanding = %d, want %d", got, want)
	}
	if _, _, ok := tb.Pick("s1"); ok {
		t.Error("Pick found a deleted instance")
	}
}

func TestPickExclude(t *testing.T) {
	tests := []struct {
		name    string
		exclude []string
		want    []string // instances Pick may return; empty: none
	}{
		{name: "nothing excluded", exclude: nil, want: []string{"a", "b", "c"}},
		{name: "one excluded", exclude: []string{"a"}, want: []string{"b", "c"}},
		{name: "two excluded", exclude: []string{"a", "c"}, want: []string{"b"}},
		{name: "all excluded", exclude: []string{"a", "b", "c"}},
		{name: "unknown excluded", exclude: []string{"zzz"}, want: []string{"a", "b", "c"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tb := routing.NewTable()
			for _, id := range []string{"a", "b", "c"} {
				tb.PutInstance(ready("s1", id))
			}
			for range 50 {
				e, release, ok := tb.Pick("s1", tc.exclude...)
				if got, want := ok, len(tc.want) > 0; got != want {
					t.Fatalf("Pick ok = %v, want %v", got, want)
				}
				if !ok {
					if release != nil || e != nil {
						t.Errorf("Pick with nothing left returned %v and a release", e)
					}
					return
				}
				release()
				if !slices.Contains(tc.want, e.Instance.ID) {
					t.Fatalf("Pick = %s, want one of %v", e.Instance.ID, tc.want)
				}
			}
		})
	}
}

func TestPickUnknownService(t *testing.T) {
	tb := routing.NewTable()
	tb.PutInstance(ready("s1", "a"))
	if _, _, ok := tb.Pick("s2"); ok {
		t.Error("Pick on a service without instances succeeded")
	}
}

func TestPickSpreadsTies(t *testing.T) {
	tb := routing.NewTable()
	ids := []string{"a", "b", "c"}
	for _, id := range ids {
		tb.PutInstance(ready("s1", id))
	}
	const picks = 1000
	counts := map[string]int{}
	for range picks {
		e, release, ok := tb.Pick("s1")
		if !ok {
			t.Fatal("Pick found nothing")
		}
		counts[e.Instance.ID]++
		release()
	}
	// Uniform would be a third each; 20% is many standard deviations away.
	for _, id := range ids {
		if got, floor := counts[id], picks/5; got < floor {
			t.Errorf("instance %s picked %d of %d times, want at least %d (counts %v)", id, got, picks, floor, counts)
		}
	}
}

// TestConcurrent exercises every method at once; run it with -race.
func TestConcurrent(t *testing.T) {
	tb := routing.NewTable()
	const workers = 8
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range 200 {
				svc := fmt.Sprintf("s%d", i%3)
				id := fmt.Sprintf("i%d", (w+i)%5)
				switch i % 6 {
				case 0:
					tb.PutService(service(svc, "u-o/"+svc+fmt.Sprint(w%2)))
				case 1:
					tb.PutInstance(ready(svc, id))
				case 2:
					in := ready(svc, id)
					in.Endpoint = fmt.Sprintf("http://127.0.0.1:%d/v1", 9000+i)
					tb.PutInstance(in)
				case 3:
					tb.DeleteInstance(svc, id)
				case 4:
					if i%4 == 0 {
						tb.DeleteService(svc)
					}
					tb.Resolve("u-o/" + svc + "0")
					_ = tb.Services()
				}
				if e, release, ok := tb.Pick(svc, "i0"); ok {
					_ = e.Outstanding()
					_ = e.Instance.Endpoint
					release()
					release()
				}
			}
		})
	}
	wg.Wait()

	// Every pick was released: nothing is left outstanding.
	for _, svc := range []string{"s0", "s1", "s2"} {
		var seen []string
		for {
			e, release, ok := tb.Pick(svc, seen...)
			if !ok {
				break
			}
			if got := e.Outstanding(); got != 1 {
				t.Errorf("%s/%s outstanding after the run = %d, want 0", svc, e.Instance.ID, got-1)
			}
			release()
			seen = append(seen, e.Instance.ID)
		}
	}
}

// A watcher can apply a stale record after a newer one has claimed the same
// access name (a name freed and reused). Removing or renaming the old
// service must not take the name away from the service that now holds it.
func TestStaleServiceKeepsNewOwnersName(t *testing.T) {
	tests := []struct {
		name  string
		stale func(tb *routing.Table)
	}{
		{name: "old service deleted", stale: func(tb *routing.Table) { tb.DeleteService("s1") }},
		{name: "old service renamed", stale: func(tb *routing.Table) { tb.PutService(service("s1", "u-o/other")) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tb := routing.NewTable()
			tb.PutService(service("s1", "u-o/a"))
			tb.PutService(service("s2", "u-o/a")) // s2 now holds the name
			tc.stale(tb)
			s, ok := tb.Resolve("u-o/a")
			if !ok || s.ID != "s2" {
				t.Errorf("Resolve(u-o/a) = %q, %v; want s2", s.ID, ok)
			}
		})
	}
}

// TestConcurrentPickWhileInstancesChange hammers one service: readers pick
// while writers add, move and remove its instances. Run it with -race: Pick
// reads the endpoint list after letting go of the lock, so writers must
// never change a list in place.
func TestConcurrentPickWhileInstancesChange(t *testing.T) {
	tb := routing.NewTable()
	for i := range 8 {
		tb.PutInstance(ready("s1", fmt.Sprintf("i%d", i)))
	}
	stop := make(chan struct{})
	var readers sync.WaitGroup
	for range 4 {
		readers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if e, release, ok := tb.Pick("s1", "i7"); ok {
					_ = e.Instance.ID
					release()
				}
			}
		})
	}
	var writers sync.WaitGroup
	for w := range 2 {
		writers.Go(func() {
			for i := range 2000 {
				id := fmt.Sprintf("i%d", (w+i)%8)
				switch i % 3 {
				case 0:
					tb.DeleteInstance("s1", id)
				case 1:
					tb.PutInstance(ready("s1", id))
				case 2:
					in := ready("s1", id)
					in.Endpoint = fmt.Sprintf("http://127.0.0.1:%d/v1", 9000+i%7)
					tb.PutInstance(in)
				}
			}
		})
	}
	writers.Wait()
	close(stop)
	readers.Wait()
}
