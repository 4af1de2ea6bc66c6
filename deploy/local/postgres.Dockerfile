# Stand-in for postgres:15: Debian bookworm's postgresql-15, and an entrypoint that reads the
# public image's settings (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, PGDATA; PGPORT too).
ARG DEBIAN_IMAGE=optishear-local/debian:bookworm
FROM ${DEBIAN_IMAGE}
# No cluster at install time: the entrypoint creates one in PGDATA (as the public image does).
RUN mkdir -p /etc/postgresql-common/createcluster.d \
 && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/no-main.conf \
 && apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/run/postgresql /var/lib/postgresql/data \
 && chown -R postgres:postgres /var/run/postgresql /var/lib/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/postgresql/data
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
