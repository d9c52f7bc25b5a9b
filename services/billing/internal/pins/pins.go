//go:build tools

// Package pins is never built. Its import keeps google.golang.org/genproto
// at a version from after googleapis/rpc and googleapis/api moved into
// modules of their own: go-kit's module requires a 2021 genproto that still
// holds them, and without this requirement go mod tidy would drop the newer
// one and every import of those packages would become ambiguous.
package pins

import _ "google.golang.org/genproto/googleapis/type/date"
