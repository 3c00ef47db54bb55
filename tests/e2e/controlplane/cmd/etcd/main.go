// Command etcd is the upstream etcd server, at the version the pinned
// k8s.io/kubernetes module requires, for the vramguard end-to-end suite.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
