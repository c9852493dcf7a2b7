# origin: written for bake's tests; the build.kdl beside it and svc/Dockerfile, as one Dockerfile for BuildKit
ARG FLAVOUR=plain
FROM busybox:1.35 AS builder
ARG FLAVOUR
WORKDIR /out
COPY svc/greeting.txt .
RUN echo "flavour: $FLAVOUR" >> greeting.txt && chmod 600 greeting.txt && chown 7:8 greeting.txt

FROM builder AS second
RUN echo second > /out/second.txt

FROM builder
COPY --from=second /out/second.txt /srv/
RUN cat /out/greeting.txt /srv/second.txt > /srv/all.txt
RUN ["/bin/mkdir", "-p", "/srv/with space"]
RUN --mount=type=bind,source=svc/greeting.txt,target=/mnt/greeting.txt --mount=type=tmpfs,target=/t \
    cat /mnt/greeting.txt > /srv/bound.txt && echo x > /t/x && ls -A /t >> /srv/bound.txt
WORKDIR /srv
CMD ["cat", "all.txt"]
