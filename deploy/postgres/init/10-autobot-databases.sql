-- The two deployables' databases, made once: the postgres image runs the files of
-- /docker-entrypoint-initdb.d only when its data volume is empty (a first start). On an existing
-- volume, run these statements by hand. psql runs this file as POSTGRES_USER, who owns both databases.

CREATE DATABASE autobot_slm;
CREATE DATABASE autobot_business;

-- The business app's knowledge base stores embeddings (pgvector); the image ships the extension.
\connect autobot_business
CREATE EXTENSION IF NOT EXISTS vector;
