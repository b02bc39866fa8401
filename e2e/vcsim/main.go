// vcsim for Vessel's vsphere provider tests (e2e/vsphere.e2e.test.ts): govmomi's simulator with
// its VPX model (1 datacenter, 1 cluster of 3 hosts, 1 standalone host, 4 VMs, 1 local
// datastore), listening on loopback with TLS (a certificate the simulator makes). Prints one JSON
// line: the SDK URL, the certificate (PEM) and each datastore's directory, so the test can
// replace a VM's disk file with a real image. Flags (repeatable) -memory VM=MB and -disk VM=BYTES
// set a VM's memory and its first disk's capacity before the server starts. Runs until stdin
// closes (then removes its datastore directories) or it is killed.
//
// Changed Block Tracking, which vcsim 0.24 lacks, is OUR TEST DOUBLE, not VMware's behaviour
// (cbt.go): CreateSnapshot_Task of a VM with changeTrackingEnabled gives its disks new change
// ids and records a hash per 64 KiB block of each disk's flat file at that moment;
// QueryChangedDiskAreas answers from those records (the blocks whose hash differs; "*": the
// non-zero blocks), in pages of 4 MiB so clients must page.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// settings is a repeatable NAME=NUMBER flag.
type settings map[string]int64

func (s settings) String() string { return "" }
func (s settings) Set(v string) error {
	i := strings.LastIndex(v, "=")
	n, err := strconv.ParseInt(v[i+1:], 10, 64)
	if i < 0 || err != nil {
		return fmt.Errorf("want NAME=NUMBER, got %q", v)
	}
	s[v[:i]] = n
	return nil
}

func main() {
	memory, disk := settings{}, settings{}
	flag.Var(memory, "memory", "VM=MB")
	flag.Var(disk, "disk", "VM=BYTES (its first disk's capacity)")
	flag.Parse()
	model := simulator.VPX()
	defer model.Remove()
	if err := model.Create(); err != nil {
		panic(err)
	}
	cert, certPEM := selfSigned("vcsim")
	_, otherPEM := selfSigned("some other CA")
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	model.Service.Listen = &url.URL{Host: "127.0.0.1:0"}
	for _, ref := range simulator.Map.All("VirtualMachine") {
		vm := ref.(*simulator.VirtualMachine)
		if mb, ok := memory[vm.Name]; ok {
			vm.Config.Hardware.MemoryMB = int32(mb)
			vm.Summary.Config.MemorySizeMB = int32(mb)
		}
		if bytes, ok := disk[vm.Name]; ok {
			for _, d := range vm.Config.Hardware.Device {
				if vd, ok := d.(*types.VirtualDisk); ok {
					vd.CapacityInBytes = bytes
					vd.CapacityInKB = bytes / 1024
					break
				}
			}
		}
	}
	server := model.Service.NewServer()
	defer server.Close()

	datastores := map[string]string{}
	for _, ref := range simulator.Map.All("Datastore") {
		ds := ref.(*simulator.Datastore)
		datastores[ds.Name] = ds.Info.GetDatastoreInfo().Url
	}
	// Set before any client knows the URL (printed below), so no request races the swap.
	server.Config.Handler = withCBT(server.Config.Handler, datastores)
	out, _ := json.Marshal(map[string]interface{}{"url": server.URL.String(), "cert": certPEM, "otherCert": otherPEM, "datastores": datastores})
	os.Stdout.Write(append(out, '\n'))
	io.Copy(io.Discard, os.Stdin)
}

// selfSigned makes a P-256 certificate for 127.0.0.1 that is its own CA (Go's built-in test
// certificate is RSA-1024, which OpenSSL's default security level refuses).
func selfSigned(cn string) (tls.Certificate, string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}
