# spawngate, FROM scratch around the static binary that scripts/setup builds into
# dist/. Runs as root only because it needs the Docker socket; it holds no shell.
FROM scratch
COPY dist/spawngate /spawngate
ENV SPAWNGATE_SERVER_LISTEN=0.0.0.0:9090 \
    SPAWNGATE_SERVER_DATA_DIR=/data
VOLUME /data
EXPOSE 9090
ENTRYPOINT ["/spawngate"]
CMD ["serve"]
