#!/bin/bash
# First start: a data directory whose root may log in over the network with MYSQL_ROOT_PASSWORD; then the server.
# Arguments meant for MySQL 8 that MariaDB does not know (KFP's manifest passes its authentication options) are
# dropped; the rest go to mariadbd.
set -euo pipefail
: "${MYSQL_ROOT_PASSWORD:?MYSQL_ROOT_PASSWORD is not set}"
datadir=/var/lib/mysql
args=()
while [ $# -gt 0 ]; do
  case $1 in
    --datadir) datadir=$2; shift 2 ;;
    --authentication-policy=* | --mysql-native-password=* | --disable-log-bin) shift ;;
    *) args+=("$1"); shift ;;
  esac
done
server=(mariadbd --datadir="$datadir" --socket=/tmp/mysqld.sock --pid-file=/tmp/mysqld.pid --tmpdir=/tmp
  --bind-address=0.0.0.0 --skip-name-resolve --skip-log-bin --character-set-server=utf8mb4)
if [ ! -d "$datadir/mysql" ]; then
  mariadb-install-db --datadir="$datadir" --auth-root-authentication-method=normal --skip-test-db >/dev/null
  "${server[@]}" --skip-networking &
  for _ in $(seq 60); do mariadb-admin --socket=/tmp/mysqld.sock -uroot ping >/dev/null 2>&1 && break; sleep 1; done
  mariadb --socket=/tmp/mysqld.sock -uroot <<SQL
CREATE USER 'root'@'%' IDENTIFIED BY '$MYSQL_ROOT_PASSWORD';
GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;
ALTER USER 'root'@'localhost' IDENTIFIED BY '$MYSQL_ROOT_PASSWORD';
SQL
  mariadb-admin --socket=/tmp/mysqld.sock -uroot -p"$MYSQL_ROOT_PASSWORD" shutdown
  wait
fi
exec "${server[@]}" "${args[@]}"
