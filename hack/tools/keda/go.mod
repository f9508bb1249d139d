// KEDA, for spec.autoscaling.engine keda: hack/keda.sh takes its CRDs (and builds its
// operator) from this pinned module, through the Go module proxy only.
module roger.dev/tools/keda

go 1.26.0

require github.com/kedacore/keda/v2 v2.21.0
