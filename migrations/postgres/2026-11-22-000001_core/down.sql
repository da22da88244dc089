DROP TABLE messages;
DROP TABLE turns;
DROP TABLE tasks;
DROP TABLE api_keys;
DROP TABLE agents;
