# origin: written for bake's tests; every config instruction, ARG scoping, base-image ENV, SHELL, ONBUILD and a Dockerfile-specific ignore file (app.Dockerfile.dockerignore)
ARG BASE=busybox:1.35
ARG SUFFIX=one
FROM $BASE AS base
ARG SUFFIX
ARG LOCAL=local-${SUFFIX}
WORKDIR /opt
WORKDIR app/sub
ENV PATH=/opt/app/bin:$PATH MODE="a b" EMPTY=
RUN echo "$SUFFIX $LOCAL $MODE" > args.txt && env | grep -E '^(SUFFIX|LOCAL)=' | sort > env.txt
ENV LOCAL=from-env
RUN echo "$LOCAL" > shadowed.txt
SHELL ["/bin/sh", "-eu", "-c"]
RUN echo "shell $0" > shell.txt
CMD run me
ENTRYPOINT ["/bin/echo"]

FROM scratch
COPY --from=busybox:1.35 /bin/busybox /bin/busybox
ADD src/ /data/
COPY --chmod=640 --chown=12:34 src/a.txt /data/copy-of-a.txt

FROM base
COPY --from=1 /data /data
COPY . /ctx/
ADD src/pkg.tar.gz /opt/
USER 1000
WORKDIR /srv/data
MAINTAINER bake tests <tests@example.com>
LABEL one=1 "two words"="2 2"
EXPOSE 80/tcp 81
STOPSIGNAL 9
HEALTHCHECK NONE
VOLUME ["/var/a", "/var/b"]
ONBUILD COPY . /onbuild/
