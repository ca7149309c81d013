/*
 * Cryptocurrency miners: XMRig-style JSON configs, miner command lines in scripts, and miner
 * ELF binaries. A stratum pool URL alone is not enough (wallet software and docs mention
 * it); each rule also needs miner-specific configuration keys or strings.
 */

rule Linux_Miner_Config
{
    meta:
        author = "onaccess"
        description = "XMRig-style miner configuration: stratum pool URL plus miner config keys"
        severity = "medium"

    strings:
        // "url": "stratum+tcp://<pool>:<port>" as a JSON member
        $pool = /"url"\s*:\s*"stratum\+(tcp|ssl|tls):\/\/[A-Za-z0-9.\-]{1,253}:[0-9]{2,5}"/ ascii
        $k_pools = "\"pools\"" ascii
        $k_donate = "\"donate-level\"" ascii
        $k_algo = "\"algo\"" ascii
        $k_randomx = "\"randomx\"" ascii
        $k_user = "\"user\"" ascii
        $k_cpu = "\"cpu\"" ascii

    condition:
        filesize < 512KB and uint32(0) != 0x464c457f and
        $pool and $k_pools and 2 of ($k_donate, $k_algo, $k_randomx, $k_user, $k_cpu)
}

rule Linux_Miner_CommandLine
{
    meta:
        author = "onaccess"
        description = "Script starting a miner against a stratum pool (-o stratum+tcp://... with miner options)"
        severity = "medium"

    strings:
        $pool_opt = /(-o|--url[= ])\s*['"]?stratum\+(tcp|ssl|tls):\/\/[A-Za-z0-9.\-]{1,253}:[0-9]{2,5}/ ascii
        $donate = /--donate-level[= ]\s*[0-9]/ ascii
        $user = /(\s-u|--user[= ])\s*['"]?[A-Za-z0-9]{20,}/ ascii
        $xmrig = "xmrig" ascii nocase
        $algo = /(-a|--algo[= ])\s*['"]?(rx\/|cn\/|randomx|cryptonight)/ ascii nocase

    condition:
        filesize < 1MB and uint32(0) != 0x464c457f and
        $pool_opt and 2 of ($donate, $user, $xmrig, $algo)
}

rule Linux_Miner_XMRig_ELF
{
    meta:
        author = "onaccess"
        description = "ELF binary carrying XMRig miner strings (stratum client, donate level, RandomX/CryptoNight)"
        severity = "high"

    strings:
        $stratum = "stratum+tcp://" ascii
        $xmrig = "xmrig" ascii nocase
        $donate = "donate-level" ascii
        $donate2 = "donate.v2.xmrig.com" ascii
        $rx = "randomx" ascii nocase
        $cn = "cryptonight" ascii nocase

    condition:
        uint32(0) == 0x464c457f and filesize < 64MB and
        $stratum and ($xmrig or $donate2) and $donate and ($rx or $cn)
}
