// Changed Block Tracking for vcsim: OUR TEST DOUBLE of vSphere's CBT (vcsim 0.24 has no
// QueryChangedDiskAreas), not VMware's behaviour. vcsim's registry type-asserts VMs to its own
// type, so rather than wrapping the VM object this intercepts two SOAP calls before vcsim sees
// them: CreateSnapshot_Task (new change ids on the VM's disks, recorded block hashes of each flat
// file) and QueryChangedDiskAreas (answered from the records). It also counts the bytes the
// datastore's /folder interface serves (GET /vessel-test/reads, JSON path → bytes).
package main

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"hash/fnv"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	cbtBlock = 64 * 1024
	cbtPage  = 4 * 1024 * 1024
)

// reads counts the bytes the datastore's /folder interface served, per URL path, so a test can
// tell what a warm round read (GET /vessel-test/reads).
var reads = struct {
	sync.Mutex
	bytes map[string]int64
}{bytes: map[string]int64{}}

type countingWriter struct {
	http.ResponseWriter
	path string
}

func (c countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	reads.Lock()
	reads.bytes[c.path] += int64(n)
	reads.Unlock()
	return n, err
}

var cbt = struct {
	sync.Mutex
	n      int
	blocks map[string][]uint64 // change id → hash per block (0: a zero block)
}{blocks: map[string][]uint64{}}

// hashBlocks reads a flat disk file: a hash per block, 0 for an all-zero block.
func hashBlocks(file string) []uint64 {
	f, err := os.Open(file)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []uint64
	buf := make([]byte, cbtBlock)
	zero := make([]byte, cbtBlock)
	for {
		n, err := io.ReadFull(f, buf)
		if n > 0 {
			if bytes.Equal(buf[:n], zero[:n]) {
				out = append(out, 0)
			} else {
				h := fnv.New64a()
				h.Write(buf[:n])
				out = append(out, h.Sum64()|1)
			}
		}
		if err != nil {
			return out
		}
	}
}

// flatFile is the file holding a disk's bytes: the descriptor's `-flat.vmdk` when there is one.
func flatFile(datastores map[string]string, name string) string {
	i := strings.Index(name, "] ")
	if !strings.HasPrefix(name, "[") || i < 0 {
		return ""
	}
	p := filepath.Join(datastores[name[1:i]], name[i+2:])
	flat := strings.TrimSuffix(p, ".vmdk") + "-flat.vmdk"
	if _, err := os.Stat(flat); err == nil {
		return flat
	}
	return p
}

// beforeSnapshot gives each disk of a CBT-enabled VM a new change id (new device structs in a new
// slice: vcsim's snapshot keeps the old slice, so earlier snapshots keep their ids).
func beforeSnapshot(datastores map[string]string, ref types.ManagedObjectReference) {
	vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok {
		return
	}
	simulator.Map.WithLock(vm, func() {
		if vm.Config.ChangeTrackingEnabled == nil || !*vm.Config.ChangeTrackingEnabled {
			return
		}
		devices := make([]types.BaseVirtualDevice, len(vm.Config.Hardware.Device))
		for i, d := range vm.Config.Hardware.Device {
			devices[i] = d
			disk, ok := d.(*types.VirtualDisk)
			if !ok {
				continue
			}
			backing, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
			if !ok {
				continue
			}
			cbt.Lock()
			cbt.n++
			id := fmt.Sprintf("52 de ad be ef 00 00 %02x-00 00 00 00 00 00 00 01/%d", disk.Key%256, cbt.n)
			cbt.blocks[id] = hashBlocks(flatFile(datastores, backing.FileName))
			cbt.Unlock()
			nd, nb := *disk, *backing
			nb.ChangeId = id
			nd.Backing = &nb
			devices[i] = &nd
		}
		vm.Config.Hardware.Device = devices
	})
}

type qcdaEnvelope struct {
	Body struct {
		Q struct {
			This        string `xml:"_this"`
			Snapshot    string `xml:"snapshot"`
			DeviceKey   int32  `xml:"deviceKey"`
			StartOffset int64  `xml:"startOffset"`
			ChangeId    string `xml:"changeId"`
		} `xml:"QueryChangedDiskAreas"`
		S struct {
			This string `xml:"_this"`
		} `xml:"CreateSnapshot_Task"`
	} `xml:"Body"`
}

func soapFault(w http.ResponseWriter, msg string) {
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(http.StatusInternalServerError)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>%s</faultstring><detail><InvalidArgumentFault xmlns="urn:vim25" xsi:type="InvalidArgument"></InvalidArgumentFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>`, msg)
}

// queryChangedDiskAreas answers one page of DiskChangeInfo.
func queryChangedDiskAreas(w http.ResponseWriter, q *qcdaEnvelope) {
	snap, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: q.Body.Q.Snapshot}).(*simulator.VirtualMachineSnapshot)
	if !ok {
		soapFault(w, "snapshot not found")
		return
	}
	var id string
	var capacity int64
	for _, d := range snap.Config.Hardware.Device {
		if disk, ok := d.(*types.VirtualDisk); ok && disk.Key == q.Body.Q.DeviceKey {
			capacity = disk.CapacityInBytes
			if b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
				id = b.ChangeId
			}
		}
	}
	cbt.Lock()
	now, okNow := cbt.blocks[id]
	before, okBefore := cbt.blocks[q.Body.Q.ChangeId]
	cbt.Unlock()
	if id == "" || !okNow {
		soapFault(w, "change tracking is not enabled on this disk")
		return
	}
	if q.Body.Q.ChangeId != "*" && !okBefore {
		soapFault(w, "unknown changeId")
		return
	}
	start := q.Body.Q.StartOffset
	length := capacity - start
	if length > cbtPage {
		length = cbtPage
	}
	var areas strings.Builder
	for b := start / cbtBlock; b*cbtBlock < start+length; b++ {
		var h, p uint64
		if int(b) < len(now) {
			h = now[b]
		}
		if int(b) < len(before) {
			p = before[b]
		}
		changed := h != p
		if q.Body.Q.ChangeId == "*" {
			changed = h != 0
		}
		if changed {
			fmt.Fprintf(&areas, "<changedArea><start>%d</start><length>%d</length></changedArea>", b*cbtBlock, cbtBlock)
		}
	}
	w.Header().Set("Content-Type", "text/xml")
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><QueryChangedDiskAreasResponse xmlns="urn:vim25"><returnval><startOffset>%d</startOffset><length>%d</length>%s</returnval></QueryChangedDiskAreasResponse></soapenv:Body></soapenv:Envelope>`, start, length, areas.String())
}

// withCBT wraps vcsim's handler: the two calls above, everything else passed through.
func withCBT(next http.Handler, datastores map[string]string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Path == "/vessel-test/reads" {
			reads.Lock()
			out, _ := json.Marshal(reads.bytes)
			reads.Unlock()
			w.Header().Set("Content-Type", "application/json")
			w.Write(out)
			return
		}
		if r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/folder/") {
			next.ServeHTTP(countingWriter{w, r.URL.Path}, r)
			return
		}
		if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/sdk") {
			next.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		var env qcdaEnvelope
		switch {
		case bytes.Contains(body, []byte("<QueryChangedDiskAreas")):
			if xml.Unmarshal(body, &env) != nil {
				soapFault(w, "bad request")
				return
			}
			queryChangedDiskAreas(w, &env)
			return
		case bytes.Contains(body, []byte("<CreateSnapshot_Task")):
			if xml.Unmarshal(body, &env) == nil {
				beforeSnapshot(datastores, types.ManagedObjectReference{Type: "VirtualMachine", Value: env.Body.S.This})
			}
		}
		next.ServeHTTP(w, r)
	})
}
