"""Tests against a real S3 server (SeaweedFS, built by `hack/s3.sh build`)."""
