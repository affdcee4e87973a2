-- The request fields of Kong's basic log serializer, computed from nginx's own
-- variables and APIs exactly as kong/plugins/log-serializers/basic.lua (Kong 2.0) does,
-- appended to a file as one JSON line per request (log phase, like Kong's plugins).
local cjson = require "cjson"

local _M = {}

function _M.log(path)
  local var = ngx.var
  local request_uri = var.request_uri or ""
  local line = cjson.encode({
    request = {
      uri = request_uri,
      url = var.scheme .. "://" .. var.host .. ":" .. var.server_port .. request_uri,
      querystring = ngx.req.get_uri_args(100),
      method = ngx.req.get_method(),
      headers = ngx.req.get_headers(100),
      size = var.request_length,
    },
    client_ip = var.remote_addr,
    -- Not in the entry: which connection the line belongs to, and the parts of `url`.
    remote_port = var.remote_port,
    scheme = var.scheme,
    host = var.host,
    server_port = var.server_port,
  })
  local file = assert(io.open(path, "a"))
  file:write(line, "\n")
  file:close()
end

return _M
