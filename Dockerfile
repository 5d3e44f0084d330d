# creditgate: the ext_proc sidecar and its CLI in one static binary.
# Build: docker build -t creditgate .
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/creditgate ./cmd/creditgate \
 && mkdir -p /out/state

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/creditgate /usr/local/bin/creditgate
# The spool directory must belong to the runtime user: a named volume mounted
# here copies this ownership, so serve can open its spool file.
COPY --from=build --chown=nonroot:nonroot /out/state /var/lib/creditgate
# 9000: ext_proc gRPC (Envoy's creditgate cluster); 8081: admin API, /metrics, /healthz, /readyz.
EXPOSE 9000 8081
# The spool keeps settlements that could not reach Redis; mount a volume here.
VOLUME ["/var/lib/creditgate"]
ENV CREDITGATE_SPOOL_PATH=/var/lib/creditgate/spool.jsonl
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/creditgate"]
CMD ["serve"]
