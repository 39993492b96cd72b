module oci-cache/go

go 1.19
